"""The demo's "Compose" tab: put an object into a background image (PrimeComposer), any attention method.

The user uploads a background, an object image and the object's mask (same size as the object
image; non-zero = object), and gives the box ``x0,y0,x1,y1`` in background pixels. Uploads are
opened through :func:`~dit_accel.image_upload.open_upload_image`; the result shows the paste
baseline beside the composite.
"""

from __future__ import annotations

import gradio as gr
import PIL.Image

from dit_accel.compare import StepCallback, generation_defaults, step_hook
from dit_accel.compose_cli import inversion_call, parse_pixel_box
from dit_accel.demo import DemoSession, optional_int, parse_options
from dit_accel.demo_jobs import StopFlags
from dit_accel.demo_widgets import click_job, flux_model_row, job_buttons, size_field
from dit_accel.editing import compose
from dit_accel.editing.prime_inputs import as_mask
from dit_accel.image_upload import open_upload_image
from dit_accel.registry import build_config

PROMPT = "a red star right of a green circle on a striped gray background"


def run_compose(
    session: DemoSession,
    model: str | None,
    background: str | None,
    object_image: str | None,
    object_mask: str | None,
    box_text: str,
    prompt: str,
    object_text: str,
    method: str,
    options_text: str,
    steps: str | int | None = None,
    on_step: StepCallback | None = None,
) -> tuple[list[tuple[PIL.Image.Image, str]], str]:
    """``[(paste baseline, caption), (composite, caption)]`` and a one-line report."""
    session.check_chosen(model)
    if not (background and object_image and object_mask):
        raise ValueError("upload a background, an object image and the object's mask")
    uploads = [
        open_upload_image(background, "background"),
        open_upload_image(object_image, "object image"),
        as_mask(open_upload_image(object_mask, "object mask")),
    ]
    try:
        box = parse_pixel_box(box_text.strip())
    except Exception as error:  # argparse's type error: same message, as a ValueError here
        raise ValueError(str(error)) from None
    options = {"attention": method, **parse_options(options_text)}
    build_config("prime_composer", **options)  # a bad option fails before the model loads
    steps = optional_int("steps", steps)
    pipe = session.flux_pipeline(model, "composition needs a FLUX.1 model")
    call = inversion_call(generation_defaults(model))
    if steps:
        call["num_inference_steps"] = steps
    if on_step is not None:
        call |= step_hook(pipe, "composition", on_step)
    result = compose(pipe, *uploads, box, prompt, object_text=object_text.strip() or None, options=options, **call)
    report = f"Object placed in box {box}; attention through **{method}**."
    return [(result.placement.pasted, "paste baseline"), (result.image, "PrimeComposer")], report


def build_compose_tab(session: DemoSession, stops: StopFlags) -> None:
    """The "Compose" tab."""
    model, method = flux_model_row(
        session,
        "Puts the object (its mask: non-zero pixels) into the box x0,y0,x1,y1 (background pixels) of the "
        "background, with PrimeComposer (attention steering, region-constrained text, background blending).",
    )
    with gr.Row():
        background = gr.File(label="background", file_types=["image"], type="filepath")
        object_image = gr.File(label="object image", file_types=["image"], type="filepath")
        object_mask = gr.File(label="object mask", file_types=["image"], type="filepath")
    with gr.Row():
        box = gr.Textbox("72,64,112,104", label="box x0,y0,x1,y1 (pixels)")
        object_text = gr.Textbox("red star", label="the prompt's words for the object")
    prompt = gr.Textbox(PROMPT, label="prompt (the scene with the object)")
    options = gr.Textbox("steer_until=1.0", label="options: prime_composer's and the method's, key=value")
    steps = size_field("steps", "the pipeline's")
    buttons = job_buttons("Compose")
    gallery = gr.Gallery(label="paste baseline and composite", columns=2)
    status = gr.Markdown()
    inputs = {"model": model, "background": background, "object_image": object_image, "object_mask": object_mask,
              "box": box, "prompt": prompt, "object_text": object_text, "method": method, "options": options,
              "steps": steps}  # fmt: skip
    click_job(buttons, run_compose, session, stops, inputs, [gallery, status], api_name="compose")
