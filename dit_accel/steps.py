"""Step awareness: which denoising step a transformer call belongs to.

A :class:`StepTracker` is shared by all transformers of one ``apply()`` handle (Wan 2.2 runs
``transformer`` and ``transformer_2`` on one step schedule). A Diffusers hook calls
:meth:`StepTracker.observe` before every transformer forward. The step index comes, in order of
preference, from the pipeline's ``cache_context`` (Wan pipelines pass ``step_index``), from the
position of the timestep in the pipeline scheduler's ``timesteps``, or from counting distinct
timesteps (a rising timestep starts a new denoising run).

The tracker turns the step into one boolean, :attr:`StepTracker.warmup`, that processors read.
Keeping the per-call decision a single flag means ``torch.compile`` sees at most two variants of
each processor instead of recompiling for every step.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch

from .block_map import BlockMap, BlockMapRequest
from .config import MethodConfig, resolve_count
from .forward_info import ForwardInfo
from .host_mirror import host_copy

logger = logging.getLogger("dit_accel")


def timestep_value(timestep: Any) -> float:
    """The noise level of a call as a float (the largest entry of a per-token timestep tensor).

    Read through :func:`host_copy`: a timestep whose storage was read before costs no GPU sync.
    """
    if isinstance(timestep, torch.Tensor):
        return float(host_copy(timestep).float().max())
    return float(timestep)


class StepTracker:
    """Step index, step count and the warm-up decision for one handle."""

    def __init__(self, config: MethodConfig, scheduler: Any = None) -> None:
        self.config = config
        self.scheduler = scheduler
        self.step_index = 0
        self.num_steps: int | None = config.num_inference_steps
        self.warmup = True
        self.calls = 0
        self._last_timestep: float | None = None
        self.info = ForwardInfo()
        self.dense_fallbacks: Counter[str] = Counter()
        self.block_map_request: BlockMapRequest | None = None
        self.block_map: BlockMap | None = None

    def record_dense_fallback(self, method: str, reason: str) -> None:
        """Count one attention call that ran dense instead of ``method``; warn on a reason's first call.

        Not counted while ``torch.compile`` traces (the count would be baked in once, not per call).
        """
        if torch.compiler.is_compiling():
            return
        if not self.dense_fallbacks[reason]:
            logger.warning(f"dit-accel {method} runs dense for some calls: {reason}")
        self.dense_fallbacks[reason] += 1

    def reset(self) -> None:
        """Forget the current denoising run (the next call starts at step 0)."""
        self.step_index = 0
        self.calls = 0
        self._last_timestep = None
        self.num_steps = self.config.num_inference_steps
        self.warmup = True

    def _from_scheduler(self, t: float) -> tuple[int, int] | None:
        """Index of ``t`` in the pipeline scheduler's timesteps, and their count.

        Pipelines pass the timestep as is (Wan, HunyuanVideo) or divided by the number of training
        timesteps (FLUX), possibly rounded to bf16. Under each scaling the nearest entry counts when
        it is closer than half the gap to its neighbours; the scaling with the smaller relative
        distance wins.
        """
        timesteps = getattr(self.scheduler, "timesteps", None)
        if not isinstance(timesteps, torch.Tensor) or timesteps.numel() == 0:
            return None
        table = host_copy(timesteps).double()
        train_steps = getattr(getattr(self.scheduler, "config", None), "num_train_timesteps", None)
        best: tuple[float, int] | None = None
        for scale in (1.0, float(train_steps or 1.0)):
            values = table / scale
            distance = (values - t).abs()
            index = int(distance.argmin())
            neighbours = values[max(0, index - 1) : index + 2]
            gaps = (neighbours[1:] - neighbours[:-1]).abs()
            half_gap = max(0.5 * float(gaps.min()), 1e-9) if gaps.numel() else float("inf")
            relative = float(distance[index]) / max(abs(float(values[index])), 1e-9)
            if float(distance[index]) <= half_gap and (best is None or relative < best[0]):
                best = (relative, index)
        return None if best is None else (best[1], int(table.numel()))

    def observe(self, timestep: Any, step_index: int | None = None, num_steps: int | None = None) -> None:
        """Record one transformer call and update :attr:`warmup`."""
        t = timestep_value(timestep) if timestep is not None else None
        if step_index is not None:
            self.step_index = step_index
            self.num_steps = num_steps or self.num_steps
        elif t is not None and (found := self._from_scheduler(t)) is not None:
            self.step_index, self.num_steps = found
        elif t is not None and self._last_timestep is not None:
            if t > self._last_timestep + 1e-6:
                self.step_index = 0
            elif t < self._last_timestep - 1e-6:
                self.step_index += 1
        if self.config.num_inference_steps is not None:
            self.num_steps = self.config.num_inference_steps
        self._last_timestep = t
        self.calls += 1
        dense_steps = resolve_count(self.config.dense_steps, self.num_steps, "dense_steps")
        self.warmup = self.step_index < dense_steps
