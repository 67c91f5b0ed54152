"""Host copies of the small device tensors read every transformer call (timesteps, the scheduler's
timestep table), made once per storage and kept until the storage is written.

Reading a CUDA tensor on the host waits for every kernel queued before the read. At the start of a
transformer forward that drains the GPU's queue, and the GPU then idles while Python launches the
forward's first kernels (the uncompiled embedding code: 3.2 ms of idle GPU at the start of a
Wan-1.3B-size forward profiled alone on the H200, ``benchmarks/results/e2e/e2e_profile_s22.json``)
instead of the CPU queuing them while the GPU still runs the previous forward. Pipelines pass the
same timestep tensor, or views of the scheduler's ``timesteps``, call after call, so one copy of the
storage serves every later read. A copy is keyed by the storage and checked against the tensor's
version counter, which every in-place write through the tensor or its views bumps; writes that
bypass autograd's views (``t.data``, ``set_`` aliases, raw kernels on the pointer) are not seen, which
no Diffusers scheduler or pipeline does to its timesteps. The cache holds a reference to the
storage, so its memory cannot be reused by another tensor while the copy is cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

Tensor = torch.Tensor

MAX_CACHED = 4  # storages kept (a run's timestep tensor and its scheduler table, per pipeline)
MAX_BYTES = 1 << 16  # larger storages are copied per read, not cached

_CACHE: OrderedDict[tuple, tuple[int, torch.UntypedStorage, Tensor]] = OrderedDict()
_LOCK = threading.Lock()  # pipelines may run in threads: the cache's reads and updates are one step


def _on_host(t: Tensor) -> bool:
    return t.device.type == "cpu"


def _to_host(t: Tensor) -> Tensor:
    """The one device-to-host copy (the round trip this module saves)."""
    return t.cpu()


def host_copy(t: Tensor) -> Tensor:
    """``t`` on the CPU: without a device round trip when its storage was copied before and has not
    been written since; otherwise one copy (cached when the storage is small)."""
    t = t.detach()  # shares the version counter (and storage) of the tensor passed
    if _on_host(t):
        return t
    if t.is_inference():  # no version counter: a write could not be told
        return _to_host(t)
    storage = t.untyped_storage()
    version = t._version
    if storage.nbytes() > MAX_BYTES:
        return _to_host(t)
    key = (str(t.device), storage.data_ptr(), storage.nbytes(), t.dtype)
    with _LOCK:
        entry = _CACHE.get(key)
        if entry is None or entry[0] != version:
            whole = t.as_strided((storage.nbytes() // t.element_size(),), (1,), 0)
            entry = (version, storage, _to_host(whole))
            _CACHE[key] = entry
        _CACHE.move_to_end(key)
        while len(_CACHE) > MAX_CACHED:
            _CACHE.popitem(last=False)
    # a copy: a caller writing into the result must not change what later reads return
    return torch.as_strided(entry[2], t.shape, t.stride(), t.storage_offset()).clone()
