"""dit-accel web demo: compare a method against dense attention, and make style-aligned batches.

    python app.py            # or: make demo
    python app.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --share

Tab 1 runs the same prompt and seed with the stock attention and with a chosen method, and shows
both side by side with PSNR, SSIM and the speedup (on a CPU at a small size that takes about a
minute). Tab 2 generates a style-aligned FLUX batch (AlignedGen). The default model is the tiny Wan
model trained for this project (assets/).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from dit_accel.call_sizes import resolve_call
from dit_accel.compare import generation_defaults
from dit_accel.demo import DemoSession, acceleration_methods, run_comparison, run_style_batch
from dit_accel.demo_jobs import StepProgress, StopFlags, Stopped
from dit_accel.tiny_model import TINY_MODEL_DIR

# Errors that come from the user's input: shown as their message in place of the result.
USER_ERRORS = (ValueError, TypeError, OSError)
# Jobs waiting in the queue beyond the running one; more are refused with a message.
QUEUE_SIZE = 8
FLUX_NEEDS = (
    "Needs a **FLUX.1 model**: a local folder, or a hub id with a network connection (`black-forest-labs/FLUX.1-dev` "
    "is a large download and wants a GPU). No small FLUX model that works offline ships yet."
)


def _error(error: Exception) -> str:
    return f"**Error:** {error}"


def _size_field(label: str, default: Any) -> gr.Textbox:
    """A size or step field: empty means the default, which the placeholder shows."""
    return gr.Textbox("", label=label, placeholder=f"empty: {default}")


def compare_job(session: DemoSession, stops: StopFlags) -> Callable[..., Iterator[tuple[Any, str]]]:
    """The compare button's handler: clears the old result, reports steps, shows errors as text."""

    def job(
        model: str,
        method: str,
        options: str,
        prompt: str,
        seed: float,
        steps: str,
        frames: str,
        height: str,
        width: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a progress bar)
    ) -> Iterator[tuple[Any, str]]:
        yield None, "Running: dense first, then the method..."
        report = StepProgress(lambda fraction, text: progress(fraction, desc=text), stops.start(request.session_hash))
        try:
            yield run_comparison(
                session, model, method, options, prompt, seed, steps, frames, height, width, on_step=report
            )
        except Stopped as stopped:
            yield None, f"**Stopped** {stopped}."
        except USER_ERRORS as error:
            yield None, _error(error)

    return job


def style_job(session: DemoSession) -> Callable[..., Iterator[tuple[Any, str]]]:
    """The style tab's handler: clears the old batch and shows errors as text."""

    def job(*inputs: Any) -> Iterator[tuple[Any, str]]:
        yield None, "Running..."
        try:
            yield run_style_batch(session, *inputs), ""
        except USER_ERRORS as error:
            yield None, _error(error)

    return job


def build_app(session: DemoSession, default_model: str) -> gr.Blocks:
    """The two-tab page; jobs run one at a time, with a bounded queue."""
    stops = StopFlags()
    defaults, size_note = resolve_call({}, generation_defaults(default_model), session.on_cpu, video=True)
    with gr.Blocks(title="dit-accel") as app:
        gr.Markdown("# dit-accel\nFaster and training-free editing attention for Diffusers video and image models.")
        with gr.Tab("Compare with dense"):
            with gr.Row():
                model = gr.Textbox(default_model, label="model (local folder or hub id)")
                method = gr.Dropdown(acceleration_methods(), value="topk", label="method")
                options = gr.Textbox("density=0.25", label="options (key=value, comma separated)")
            prompt = gr.Textbox("a red circle moving right on a striped blue background", label="prompt")
            with gr.Row():
                seed = gr.Number(0, label="seed", precision=0)
                steps = _size_field("steps", defaults.get("num_inference_steps"))
                frames = _size_field("frames", defaults.get("num_frames"))
                height = _size_field("height", defaults.get("height"))
                width = _size_field("width", defaults.get("width"))
            if size_note:
                gr.Markdown(size_note)
            with gr.Row():
                run = gr.Button("Generate dense and with the method", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            side_by_side = gr.Image(label="dense | method", type="filepath")
            summary = gr.Markdown()
            run.click(
                compare_job(session, stops),
                [model, method, options, prompt, seed, steps, frames, height, width],
                [side_by_side, summary],
                api_name="compare",
            )

            def stop_job(request: gr.Request) -> None:
                stops.stop(request.session_hash)

            stop.click(stop_job, None, None, queue=False, api_name="stop")
        with gr.Tab("Style-aligned batch (FLUX)"):
            gr.Markdown(FLUX_NEEDS)
            flux_model = gr.Textbox("", label="FLUX model", placeholder="black-forest-labs/FLUX.1-dev or a folder")
            style = gr.Textbox("in the style of a watercolor painting", label="style")
            subjects = gr.Textbox("a cat\na lighthouse\na bicycle", lines=4, label="subjects (one per line)")
            style_options = gr.Textbox(
                "style_lambda=1.1", label="aligned_gen options, e.g. attention=topk, density=0.25"
            )
            with gr.Row():
                style_seed = gr.Number(0, label="seed", precision=0)
                style_steps = _size_field("steps", "the pipeline's default")
                size = _size_field("size", "the pipeline's default")
            make = gr.Button("Generate the batch", variant="primary")
            gallery = gr.Gallery(label="image 0 is the style reference", columns=4)
            style_status = gr.Markdown()
            make.click(
                style_job(session),
                [flux_model, style, subjects, style_options, style_seed, style_steps, size],
                [gallery, style_status],
                api_name="style",
            )

        def page_closed(request: gr.Request) -> None:
            stops.forget(request.session_hash)  # its job stops at the next step

        app.unload(page_closed)
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(TINY_MODEL_DIR), help="default model of the compare tab")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public Gradio link")
    args = parser.parse_args()
    session = DemoSession(args.device, args.dtype)
    build_app(session, args.model).launch(
        server_name=args.host, server_port=args.port, share=args.share, show_error=True
    )


if __name__ == "__main__":
    main()
