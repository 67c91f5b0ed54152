"""The folder ``dit-accel finetune-sla`` writes and ``apply(pipe, "sla", weights=...)`` reads.

Files:

* ``projections.safetensors``: every layer's SLA projection, keyed ``{component}.{module path}.weight``
  (``component`` is the transformer's name in its pipeline, e.g. ``transformer``, ``transformer_2``);
* ``lora.safetensors`` (when LoRA adapters were trained): the adapters' weights keyed
  ``{component}.{peft key}``, and their ``LoraConfig`` fields as JSON metadata (``lora_config``);
* ``transformer.safetensors`` (when every weight was trained): all other transformer weights, keyed
  ``{component}.{state-dict key}``;
* ``sla.json``: the SLA options and training settings the weights were made with.

Loaded LoRA adapters are named ``dit_accel_sla`` and removed again by ``handle.remove()``; loaded
transformer weights replace the model's, whose values are kept on the CPU and put back by ``remove()``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PROJECTIONS_FILE = "projections.safetensors"
LORA_FILE = "lora.safetensors"
TRANSFORMER_FILE = "transformer.safetensors"
INFO_FILE = "sla.json"
LORA_ADAPTER = "dit_accel_sla"
# Options that change what the projections were trained to correct: a mismatch is worth a warning.
MATCHED_OPTIONS = ("k_high", "k_low", "feature_map", "block_size")

logger = logging.getLogger("dit_accel")


def named_transformers(target: Any, transformers: list[torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Each transformer under its pipeline component name (``transformer`` for a bare model)."""
    components = getattr(target, "components", None)
    if not isinstance(components, dict):
        return {"transformer": transformers[0]}
    return {name: model for name, model in components.items() if any(model is t for t in transformers)}


def projection_parameters(named: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """The SLA projections of every transformer, by their key in ``projections.safetensors``."""
    from dit_accel.methods.sla import SLAProjection

    return {
        f"{component}.{path}.{name}": parameter
        for component, model in named.items()
        for path, module in model.named_modules()
        if isinstance(module, SLAProjection)
        for name, parameter in module.named_parameters()
    }


def _to_file(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: t.detach().cpu().contiguous() for key, t in tensors.items()}


def save_sla_weights(out_dir: str | Path, named: dict[str, torch.nn.Module], info: dict[str, Any],
                     lora: dict[str, Any] | None = None, transformer: bool = False) -> Path:  # fmt: skip
    """Write the projections, the ``LORA_ADAPTER`` adapters when ``lora`` holds their config fields, and
    with ``transformer`` every other transformer weight (after ``train="all"``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(_to_file(projection_parameters(named)), str(out / PROJECTIONS_FILE))
    if transformer:
        save_file(_to_file(transformer_tensors(named)), str(out / TRANSFORMER_FILE))
    if lora is not None:
        from peft import get_peft_model_state_dict

        adapters = {
            f"{component}.{key}": value
            for component, model in named.items()
            for key, value in get_peft_model_state_dict(model, adapter_name=LORA_ADAPTER).items()
        }
        save_file(_to_file(adapters), str(out / LORA_FILE), metadata={"lora_config": json.dumps(lora)})
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    return out


def add_lora(model: torch.nn.Module, fields: dict[str, Any]) -> Callable[[], None]:
    """Add the ``LORA_ADAPTER`` adapters to ``model`` (Diffusers' PEFT integration); returns their removal."""
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise ImportError("LoRA adapters need peft: pip install 'dit-accel[train]' (or pip install peft)") from error
    had_adapters = bool(getattr(model, "peft_config", None))
    model.add_adapter(LoraConfig(**fields), adapter_name=LORA_ADAPTER)

    def remove() -> None:
        if had_adapters:
            model.delete_adapters(LORA_ADAPTER)
        else:
            model.unload_lora()  # puts the original linear layers back

    return remove


def transformer_tensors(named: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every transformer weight but the SLA projections (views into the models), by their file key."""
    projections = projection_parameters(named)
    return {key: t for c, model in named.items() for n, t in model.state_dict().items()
            if (key := f"{c}.{n}") not in projections}  # fmt: skip


def load_sla_weights(path: str | Path, named: dict[str, torch.nn.Module], config: Any) -> Callable[[], None] | None:
    """Load a weights folder into the installed projections (and LoRA adapters, and trained transformer
    weights); returns what undoes the adapters and the weights, or None."""
    folder = Path(path)
    if not (folder / PROJECTIONS_FILE).is_file():
        raise FileNotFoundError(
            f"weights: no {PROJECTIONS_FILE} in {folder} (a folder written by dit-accel finetune-sla)"
        )
    _warn_on_option_mismatch(folder, config)
    _copy_from_file(folder / PROJECTIONS_FILE, projection_parameters(named), "projection")
    undo = []
    if (folder / TRANSFORMER_FILE).is_file():
        targets = transformer_tensors(named)
        originals = {key: t.detach().to("cpu", copy=True) for key, t in targets.items()}
        _copy_from_file(folder / TRANSFORMER_FILE, targets, "transformer weight")
        undo.append(lambda: _copy_values(targets, originals))
    if (folder / LORA_FILE).is_file():
        undo.append(_load_lora(folder / LORA_FILE, named))
    if not undo:
        return None

    def undo_all() -> None:
        for step in reversed(undo):
            step()

    return undo_all


def _copy_values(targets: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(values[key])


def _copy_from_file(file: Path, targets: dict[str, torch.Tensor], what: str) -> None:
    """Copy each target's value from ``file`` (same key), checking that it is there with the same shape."""
    with safe_open(str(file), framework="pt") as f:
        if missing := sorted(set(targets) - set(f.keys())):
            raise ValueError(
                f"weights: {file} has no {what} for {len(missing)} key(s), e.g. {missing[0]!r}: "
                "it was trained for another model"
            )
        values = {key: f.get_tensor(key) for key in targets}
    for key, value in values.items():
        if value.shape != targets[key].shape:
            raise ValueError(f"weights: {key} is {tuple(value.shape)} in {file}, the model's is "
                             f"{tuple(targets[key].shape)}")  # fmt: skip
    _copy_values(targets, values)


def _load_lora(file: Path, named: dict[str, torch.nn.Module]) -> Callable[[], None]:
    """Add the adapters stored in ``file`` to each transformer; returns their removal."""
    from peft import set_peft_model_state_dict

    removals = []
    with safe_open(str(file), framework="pt") as f:
        fields = json.loads(f.metadata()["lora_config"])
        for component, model in named.items():
            prefix = f"{component}."
            state = {key[len(prefix) :]: f.get_tensor(key) for key in f.keys() if key.startswith(prefix)}  # noqa: SIM118
            removals.append(add_lora(model, fields))
            result = set_peft_model_state_dict(model, state, adapter_name=LORA_ADAPTER)
            if unexpected := getattr(result, "unexpected_keys", None):
                raise ValueError(f"weights: LoRA keys the model does not have, e.g. {unexpected[0]!r}")

    def remove_all() -> None:
        for remove in removals:
            remove()

    return remove_all


def _warn_on_option_mismatch(folder: Path, config: Any) -> None:
    info_file = folder / INFO_FILE
    if not info_file.is_file():
        return
    trained = json.loads(info_file.read_text()).get("sla_options", {})
    for name in MATCHED_OPTIONS:
        if name in trained and json.dumps(trained[name]) != json.dumps(getattr(config, name)):
            logger.warning(
                "dit-accel: sla weights in %s were trained with %s=%s, applied with %s=%s",
                folder, name, trained[name], name, getattr(config, name),
            )  # fmt: skip
