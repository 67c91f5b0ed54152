"""PrimeComposer's correlation branch: the pasted composite's trajectory run beside the generator.

Before every transformer call of a steered step, a hook runs the model once more on the pasted
composite's inverted latents at that step's sigma, with the call's own text, timestep and ids. The
op, in capture mode, stores each steered layer's queries and keys (their products are the logits
between the composite's and the object's tokens) and ends the pass after the last steered layer.
The call that follows then has them: the generator's cond and uncond calls each get the branch
with their own text. The same hook marks the calls whose text is the prompt's (not the negative
prompt's): only those get the region-constrained text attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook

from dit_accel.pipelines import ModelAdapter, find_adapter
from dit_accel.steps import timestep_value

from .reference import CaptureComplete

HOOK_NAME = "dit_accel_prime_composer_correlation"


@dataclass(frozen=True)
class CompositionPlan:
    """What the PrimeComposer op needs beyond its options, built by :func:`~dit_accel.editing.compose`.

    Attributes:
        composite: ``(N + 1, 1, L, C)`` latents of the pasted composite at each of the scheduler's sigmas.
        sigmas: the ``N + 1`` sigmas of that trajectory (the last is 0).
        objects: ``(L,)`` bool, the placed object's image tokens (raster order).
        outside: ``(L,)`` bool, the image tokens outside the box (raster order).
        text_tokens: positions of the object's text tokens in the prompt ('' : no text constraint).
        prompt_embeds: the prompt's T5 embeddings; calls with this text get the text constraint.
    """

    composite: torch.Tensor
    sigmas: torch.Tensor
    objects: torch.Tensor
    outside: torch.Tensor
    text_tokens: tuple[int, ...] = ()
    prompt_embeds: torch.Tensor | None = field(default=None, repr=False)

    def step_of(self, sigma: float) -> int:
        """The trajectory index whose sigma is closest to ``sigma``."""
        return int((self.sigmas[:-1] - sigma).abs().argmin())


class CorrelationStore:
    """Per-call state shared by the hook and the op.

    Attributes:
        qk: layer index -> the correlation branch's ``(q, k)`` for the current call.
        capturing: True while the correlation pass runs.
        constrain: whether the current call gets the region-constrained text attention.
    """

    def __init__(self) -> None:
        self.qk: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.capturing = False
        self.constrain = False

    def clear(self) -> None:
        self.qk.clear()
        self.constrain = False


class CorrelationHook(ModelHook):
    """Before each transformer call: run the correlation pass (steered steps), mark prompt-text calls."""

    _is_stateful = True  # the pipeline's end-of-call reset frees the stored q/k

    def __init__(self, plan: CompositionPlan, store: CorrelationStore, steer_steps: int, adapter: ModelAdapter) -> None:
        super().__init__()
        self.plan = plan
        self.store = store
        self.steer_steps = steer_steps
        self.adapter = adapter

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        arguments = self.adapter.bind_arguments(module, args, kwargs)
        self.store.clear()
        text = arguments.get("encoder_hidden_states")
        embeds = self.plan.prompt_embeds
        same_text = embeds is not None and text is not None and text.shape == embeds.shape
        self.store.constrain = (
            bool(self.plan.text_tokens) and same_text and torch.allclose(text, embeds.to(text), rtol=1e-4, atol=1e-4)
        )
        step = self.plan.step_of(timestep_value(arguments["timestep"]))
        if step < self.steer_steps:
            self._capture(arguments, step)
        return args, kwargs

    def _capture(self, arguments: dict[str, Any], step: int) -> None:
        inputs = {name: value for name, value in arguments.items() if name != "self"}
        hidden = inputs["hidden_states"]
        if hidden.shape[1:] != self.plan.composite.shape[2:]:
            raise ValueError(
                f"the pipeline generates {hidden.shape[1]} image tokens of {hidden.shape[2]} channels but the "
                f"composition was planned for {tuple(self.plan.composite.shape[2:])}; call it at the planned size"
            )
        inputs["hidden_states"] = self.plan.composite[step].to(hidden).expand_as(hidden)
        inputs["return_dict"] = False
        self.store.capturing = True
        try:
            self.fn_ref.forward(**inputs)
        except CaptureComplete:
            pass
        finally:
            self.store.capturing = False

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.store.clear()
        return module


def attach_correlation(
    transformers: list[torch.nn.Module], plan: CompositionPlan, store: CorrelationStore, steer_steps: int
) -> Callable[[], None]:
    """Hook the transformers; returns the function that removes the hooks."""
    for model in transformers:
        hook = CorrelationHook(plan, store, steer_steps, find_adapter(model))
        HookRegistry.check_if_exists_or_initialize(model).register_hook(hook, HOOK_NAME)

    def detach() -> None:
        for model in transformers:
            HookRegistry.check_if_exists_or_initialize(model).remove_hook(HOOK_NAME, recurse=False)
        store.clear()

    return detach
