"""The web demo's page (Gradio), started by ``dit-accel demo`` (or ``make demo``, ``python app.py``).

Tab "Accelerate" runs one prompt and seed with dense attention and with any ``accelerate`` method of
the registry, its options offered as widgets built from the method's options dataclass, and shows
both videos playing side by side, the wall time and speedup, PSNR and SSIM per frame, and the block
map of a chosen layer, step and head. Tab "Style-aligned batch" generates a style-aligned FLUX batch
(AlignedGen) through any of those methods, with its style-consistency score; "Multi-subject"
(IR-Diffusion), "Compose" (PrimeComposer) and "Concept masks" (AttenCraft) are the other FLUX editors'
tabs (``demo_ir_diffusion``, ``demo_compose``, ``demo_attencraft``). The image tabs default to the
shipped tiny FLUX.

Only the models the demo was started with are offered (a list, never a typed path). Jobs run one at a
time in a bounded queue; each step shows in the progress bar; Stop or closing the page ends a job at
its next step. Input mistakes, bad uploads and GPU out-of-memory show a message in place of the
result, and the server keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import pandas as pd

from dit_accel.call_sizes import resolve_call
from dit_accel.compare import DEFAULT_PROMPT, ComparisonResult, generation_defaults
from dit_accel.demo import (
    DemoSession,
    acceleration_methods,
    block_map_view,
    run_comparison,
    run_style_batch,
)
from dit_accel.demo_attencraft import build_attencraft_tab
from dit_accel.demo_compose import build_compose_tab
from dit_accel.demo_ir_diffusion import build_ir_diffusion_tab
from dit_accel.demo_jobs import StopFlags
from dit_accel.demo_widgets import (
    click_job,
    failure_text,
    flux_model_row,
    job_buttons,
    seed_steps_size_row,
    size_field,
    step_progress,
    stop_job,
)
from dit_accel.image_upload import MAX_UPLOAD_MB, open_upload_image
from dit_accel.option_specs import OptionSpec, changed_options, options_text
from dit_accel.tiny_model import TINY_FLUX_DIR

# Jobs waiting in the queue beyond the running one; more are refused with a message.
QUEUE_SIZE = 8
# Identical frames have an infinite PSNR; the plot shows them at this value.
PSNR_CAP = 100.0
# The style tab's example (style, subjects): for the shipped tiny FLUX, in its caption grammar.
TINY_FLUX_EXAMPLE = ("on a striped gray background", "a red star\na blue ring\na green square")
GENERIC_STYLE_EXAMPLE = ("in the style of a watercolor painting", "a cat\na lighthouse\na bicycle")
# Option help under each widget is cut after this many characters (the full text is in the docs).
HELP_CHARS = 160


def short_help(text: str) -> str:
    """An option's help text, cut to its first sentence or :data:`HELP_CHARS` characters."""
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= HELP_CHARS else first[: HELP_CHARS - 1].rstrip() + "…"


def option_widget(spec: OptionSpec) -> gr.components.Component:
    """The Gradio widget of one option, showing its default for the chosen model."""
    common = {"label": spec.name, "info": short_help(spec.help), "min_width": 200, "interactive": True}
    if spec.kind == "slider":
        return gr.Slider(spec.range[0], spec.range[1], value=spec.value, step=spec.step, **common)
    if spec.kind == "number":
        low, high = spec.range or (None, None)
        return gr.Number(spec.value, precision=0 if spec.integer else None, minimum=low, maximum=high, **common)
    if spec.kind == "checkbox":
        return gr.Checkbox(spec.value, **common)
    if spec.kind == "dropdown":
        return gr.Dropdown(spec.labels, value=spec.shown, **common)
    return gr.Textbox(spec.shown, placeholder="empty: the default", **common)


def frame_plots(result: ComparisonResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PSNR and SSIM per frame, for two line plots."""
    frames = list(range(len(result.psnr_per_frame)))
    psnr = [min(value, PSNR_CAP) for value in result.psnr_per_frame]
    return (
        pd.DataFrame({"frame": frames, "PSNR (dB)": psnr}),
        pd.DataFrame({"frame": frames, "SSIM": result.ssim_per_frame}),
    )


def map_view(kept: tuple[Any, Any] | None, head: float | None) -> tuple[Any, str]:
    """The block map picture and caption of one head, from the (map, request) a comparison kept."""
    if kept is None:
        return None, ""
    try:
        return block_map_view(kept[0], head, kept[1])
    except ValueError as error:
        return None, f"**Error:** {error}"


def accelerate_job(session: DemoSession, stops: StopFlags) -> Callable[..., Iterator[tuple[Any, ...]]]:
    """The Generate button's handler: clears the old result, reports steps, shows failures as text."""

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
        map_layer: str,
        map_step: str,
        map_head: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a progress bar)
    ) -> Iterator[tuple[Any, ...]]:
        yield None, None, "Running: dense first, then the method...", None, None, None, "", None
        try:
            run = run_comparison(
                session, model, method, options, prompt, seed, steps, frames, height, width, map_layer, map_step,
                on_step=step_progress(progress, stops, request, runs=2),
            )  # fmt: skip
        except Exception as error:
            yield None, None, failure_text(error), None, None, None, "", None
            return
        kept = (run.result.block_map, run.map_request)
        psnr, ssim = frame_plots(run.result)
        yield run.dense_video, run.method_video, run.summary, psnr, ssim, *map_view(kept, map_head), kept

    return job


def check_style_image(path: str | None) -> tuple[Any, str]:
    """Open an uploaded style image as the batch will: a preview, or the message saying what is wrong."""
    if not path:
        return None, ""
    try:
        return open_upload_image(path, "style image"), ""
    except ValueError as error:
        return None, f"**Error:** {error}"


def _accelerate_tab(session: DemoSession, stops: StopFlags) -> None:
    models = [(session.label(model), model) for model in session.models]
    defaults, size_note = resolve_call({}, generation_defaults(session.models[0]), session.on_cpu, video=True)
    with gr.Row():
        model = gr.Dropdown(models, value=session.models[0], label="model", info="the models this demo serves")
        method = gr.Dropdown(acceleration_methods(), value="topk", label="method")
    options = gr.Textbox(
        "", label="options given to the method", interactive=False,
        info="set by the widgets below; the others keep the method's defaults for this model",
    )  # fmt: skip

    @gr.render(inputs=[method, model])
    def method_options(method_name: str, model_name: str) -> None:
        specs = session.option_specs(method_name, model_name)
        with gr.Row():
            widgets = [option_widget(spec) for spec in specs]

        def collect(*values: Any) -> str:
            return options_text(changed_options(specs, list(values)))

        gr.on([w.change for w in widgets], collect, widgets, options, queue=False, api_visibility="private")

    gr.on([method.change, model.change], lambda: "", None, options, queue=False, api_visibility="private")
    prompt = gr.Textbox(DEFAULT_PROMPT, label="prompt")
    with gr.Row():
        seed = gr.Number(0, label="seed", precision=0, min_width=100)
        steps = size_field("steps", defaults.get("num_inference_steps"))
        frames = size_field("frames", defaults.get("num_frames"))
        height = size_field("height", defaults.get("height"))
        width = size_field("width", defaults.get("width"))
    if size_note:
        gr.Markdown(size_note)
    with gr.Row():
        map_layer = size_field("block map: layer", "the middle one")
        map_step = size_field("block map: step", "the last one")
        map_head = gr.Number(0, label="block map: head", precision=0, minimum=0, min_width=100)
    run, stop = job_buttons("Generate")
    with gr.Row():
        dense_video = gr.Video(label="dense", autoplay=True, loop=True, interactive=False)
        method_video = gr.Video(label="method", autoplay=True, loop=True, interactive=False)
    summary = gr.Markdown()
    with gr.Row():
        psnr = gr.LinePlot(x="frame", y="PSNR (dB)", label=f"PSNR per frame (identical: {PSNR_CAP:.0f})")
        ssim = gr.LinePlot(x="frame", y="SSIM", label="SSIM per frame")
    with gr.Row():
        map_image = gr.Image(label="block map", format="png", interactive=False)
        map_caption = gr.Markdown()
    kept_map = gr.State(None)
    run.click(
        accelerate_job(session, stops),
        [model, method, options, prompt, seed, steps, frames, height, width, map_layer, map_step, map_head],
        [dense_video, method_video, summary, psnr, ssim, map_image, map_caption, kept_map],
        api_name="compare",
    )
    map_head.change(map_view, [kept_map, map_head], [map_image, map_caption], queue=False, api_name="block_map")
    stop.click(stop_job(stops), None, None, queue=False, api_name="stop")


def _style_tab(session: DemoSession, stops: StopFlags) -> None:
    model, method = flux_model_row(
        session, "Image 0 is the style reference (or the style image, when given); every image shares its style. "
    )
    # The shipped tiny FLUX knows only its caption grammar: its example speaks that grammar.
    tiny = model.value == str(TINY_FLUX_DIR)
    example_style, example_subjects = TINY_FLUX_EXAMPLE if tiny else GENERIC_STYLE_EXAMPLE
    style = gr.Textbox(example_style, label="style")
    subjects = gr.Textbox(example_subjects, lines=4, label="subjects (one per line)")
    options = gr.Textbox(
        "style_lambda=1.1", label="options: aligned_gen's and the method's, key=value (e.g. density=0.25)"
    )
    with gr.Row():
        style_image = gr.File(label="style image (optional)", file_types=["image"], type="filepath")
        preview = gr.Image(label="style image as used", interactive=False, height=160)
    seed, steps, size = seed_steps_size_row()
    buttons = job_buttons("Generate the batch")
    gallery = gr.Gallery(label="the batch", columns=4)
    status = gr.Markdown()
    style_image.upload(check_style_image, style_image, [preview, status], api_name="check_style_image")
    inputs = {"model": model, "style": style, "subjects": subjects, "method": method, "options": options,
              "style_image": style_image, "seed": seed, "steps": steps, "size": size}  # fmt: skip
    click_job(buttons, run_style_batch, session, stops, inputs, [gallery, status], api_name="style")


def build_app(session: DemoSession) -> gr.Blocks:
    """The page and its tabs; jobs run one at a time, with a bounded queue."""
    stops = StopFlags()
    with gr.Blocks(title="dit-accel", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# dit-accel\nFaster and training-free editing attention for Diffusers video and image models.")
        with gr.Tab("Accelerate"):
            _accelerate_tab(session, stops)
        with gr.Tab("Style-aligned batch"):
            _style_tab(session, stops)
        with gr.Tab("Multi-subject"):
            build_ir_diffusion_tab(session, stops)
        with gr.Tab("Compose"):
            build_compose_tab(session, stops)
        with gr.Tab("Concept masks"):
            build_attencraft_tab(session, stops)

        def page_closed(request: gr.Request) -> None:
            stops.forget(request.session_hash)  # its job stops at the next step

        app.unload(page_closed)
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **extra: Any):
    """Serve the page with the demo's upload limit; ``extra`` goes to ``Blocks.launch`` as it is."""
    return app.launch(
        server_name=host, server_port=port, share=share, show_error=True, max_file_size=f"{MAX_UPLOAD_MB}mb", **extra
    )
