"""Gradio pieces every tab of the demo shares: job handlers, the FLUX model row, step fields, Stop.

A job handler streams two updates: the cleared outputs with "Running...", then the run's result (or,
when it fails, the cleared outputs with the failure's text in the status). Gradio injects the page's
request and progress bar by the handler's signature, so :func:`streamed_job` gives each handler an
explicit one: the API names of the run's inputs, then ``request`` and ``progress``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gradio as gr
import torch

from dit_accel.demo import NO_FLUX_MODEL, OUT_OF_MEMORY, DemoSession, acceleration_methods, free_gpu_memory
from dit_accel.demo_jobs import StepProgress, StopFlags, Stopped

# Errors that come from the user's input: shown as their message in place of the result.
USER_ERRORS = (ValueError, TypeError, OSError)


def failure_text(error: Exception) -> str:
    """What a job shows in place of its result when it fails: a stop, a GPU out-of-memory (after freeing
    the memory), or an input mistake; any other error is raised again (a bug: Gradio reports it)."""
    if isinstance(error, Stopped):
        return f"**Stopped** {error}."
    if isinstance(error, torch.cuda.OutOfMemoryError):
        free_gpu_memory()
        return f"**Error:** {OUT_OF_MEMORY}"
    if isinstance(error, USER_ERRORS):
        return f"**Error:** {error}"
    raise error


def step_progress(progress: gr.Progress, stops: StopFlags, request: gr.Request, runs: int) -> StepProgress:
    """The step callback of one job: the page's progress bar, stopped by the session's Stop button."""
    return StepProgress(lambda fraction, text: progress(fraction, desc=text), stops.start(request.session_hash), runs)


def streamed_job(
    run: Callable[..., tuple[Any, ...]], session: DemoSession, stops: StopFlags, inputs: Sequence[str], outputs: int
) -> Callable[..., Iterator[tuple[Any, ...]]]:
    """The handler of a one-run tab: ``run(session, *inputs, on_step=...)`` returns the ``outputs``
    values, the status text last; the handler clears them first and shows failures in the status.

    ``inputs`` are the names the page's API shows (``gradio_client``'s keywords), one per parameter of
    ``run`` between ``session`` and ``on_step``, in that order.
    """
    wanted = [name for name in inspect.signature(run).parameters if name not in ("session", "on_step")]
    if len(inputs) != len(wanted):
        raise ValueError(f"{run.__name__} takes {len(wanted)} inputs ({', '.join(wanted)}), got {len(inputs)}")
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter(name, keyword) for name in inputs]
    parameters.append(inspect.Parameter("request", keyword, annotation=gr.Request))
    parameters.append(inspect.Parameter("progress", keyword, default=gr.Progress()))
    signature = inspect.Signature(parameters)

    def job(*args: Any, **kwargs: Any) -> Iterator[tuple[Any, ...]]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = [bound.arguments[name] for name in inputs]
        on_step = step_progress(bound.arguments["progress"], stops, bound.arguments["request"], runs=1)
        cleared = (None,) * (outputs - 1)
        yield (*cleared, "Running...")
        try:
            yield run(session, *values, on_step=on_step)
        except Exception as error:
            yield (*cleared, failure_text(error))

    job.__signature__ = signature  # type: ignore[attr-defined]
    job.__annotations__ = {"request": gr.Request}  # Gradio reads the request's type hint from here
    return job


def job_buttons(label: str) -> tuple[gr.Button, gr.Button]:
    """A tab's row of its run button (``label``) and its Stop button."""
    with gr.Row():
        make = gr.Button(label, variant="primary")
        stop = gr.Button("Stop", variant="stop")
    return make, stop


def seed_steps_size_row() -> tuple[gr.Number, gr.Textbox, gr.Textbox]:
    """An image tab's seed, step count and size (empty: the pipeline's)."""
    with gr.Row():
        seed = gr.Number(0, label="seed", precision=0, min_width=100)
        steps = size_field("steps", "the pipeline's")
        size = size_field("size", "the pipeline's")
    return seed, steps, size


def click_job(
    buttons: tuple[gr.Button, gr.Button],
    run: Callable[..., tuple[Any, ...]],
    session: DemoSession,
    stops: StopFlags,
    inputs: dict[str, gr.components.Component],
    outputs: list[gr.components.Component],
    api_name: str,
) -> None:
    """The run button of ``buttons`` (from :func:`job_buttons`) runs :func:`streamed_job` of ``run`` on
    ``inputs`` (API name: component) into ``outputs`` as ``api_name``; its Stop button stops the session's
    job, as ``stop_<api_name>``."""
    make, stop = buttons
    job = streamed_job(run, session, stops, list(inputs), len(outputs))
    make.click(job, list(inputs.values()), outputs, api_name=api_name)
    stop.click(stop_job(stops), None, None, queue=False, api_name=f"stop_{api_name}")


def stop_job(stops: StopFlags) -> Callable[[gr.Request], None]:
    """A Stop button's handler: the session's running job stops at its next step."""

    def stop(request: gr.Request) -> None:
        stops.stop(request.session_hash)

    return stop


def size_field(label: str, default: Any) -> gr.Textbox:
    """A size or step field: empty means the default, which the placeholder shows."""
    return gr.Textbox("", label=label, placeholder=f"empty: {default}", min_width=100)


def flux_model_row(session: DemoSession, description: str) -> tuple[gr.Dropdown, gr.Dropdown]:
    """An image tab's head: its description (with a note when no FLUX model was loaded), then the FLUX
    model and acceleration method menus."""
    models = [(session.label(model), model) for model in session.style_models()]
    gr.Markdown(description + ("" if models else f"\n\n**Note:** {NO_FLUX_MODEL}."))
    with gr.Row():
        model = gr.Dropdown(models, value=models[0][1] if models else None, label="FLUX model")
        method = gr.Dropdown(acceleration_methods(), value="dense", label="accelerate with")
    return model, method
