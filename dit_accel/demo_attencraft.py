"""The demo's "Concept masks" tab: one FLUX generation and AttenCraft's masks of the concepts it names.

The user writes a prompt and its concept phrases (one per line); the masks come from the attention
maps of the generation itself (no training), which runs through any acceleration method.
"""

from __future__ import annotations

import gradio as gr
import PIL.Image

from dit_accel.compare import StepCallback
from dit_accel.demo import DemoSession, flux_image_call, parse_options
from dit_accel.demo_jobs import StopFlags
from dit_accel.demo_widgets import click_job, flux_model_row, job_buttons, seed_steps_size_row
from dit_accel.editing.attencraft_masks import concept_masks
from dit_accel.registry import build_config

PROMPT = "a red star left of a blue ring on a striped gray background"
CONCEPTS = "red star\nblue ring"


def run_concept_masks(
    session: DemoSession,
    model: str | None,
    prompt: str,
    concepts_text: str,
    method: str,
    options_text: str,
    seed: float,
    steps: str | int | None = None,
    size: str | int | None = None,
    on_step: StepCallback | None = None,
) -> tuple[PIL.Image.Image, PIL.Image.Image, str]:
    """The mask overlay, the image, and a report of each concept's mask area."""
    session.check_chosen(model)
    concepts = [line.strip() for line in (concepts_text or "").splitlines() if line.strip()]
    if not prompt.strip() or not concepts:
        raise ValueError("give a prompt and at least one concept phrase of it, one per line")
    options = parse_options(options_text)
    build_config(method, **options)  # a bad option fails before the model loads
    pipe, call = flux_image_call(session, model, steps, size, "concept masks need a FLUX.1 model", "concept masks",
                                 on_step)  # fmt: skip
    total = call.get("num_inference_steps", 28)
    masks = concept_masks(
        pipe, prompt, concepts, background=None, power=2, floor=0.7, steps=(total // 2, None), seed=int(seed),
        method=method, method_options=options, **call,
    )  # fmt: skip
    areas = ", ".join(f"**{c}** {float(m.float().mean()):.1%}" for c, m in zip(concepts, masks.masks, strict=True))
    return masks.overlay(), masks.image, f"Mask areas: {areas} (attention through **{method}**)."


def build_attencraft_tab(session: DemoSession, stops: StopFlags) -> None:
    """The "Concept masks" tab."""
    model, method = flux_model_row(
        session,
        "One generation; each concept phrase gets a mask from its attention maps, refined by the image's "
        "self-attention (AttenCraft, no training).",
    )
    prompt = gr.Textbox(PROMPT, label="prompt")
    with gr.Row():
        concepts = gr.Textbox(CONCEPTS, lines=3, label="concepts (phrases of the prompt, one per line)")
        options = gr.Textbox("", label="the method's options, key=value (e.g. density=0.25)")
    seed, steps, size = seed_steps_size_row()
    buttons = job_buttons("Generate and find the masks")
    with gr.Row():
        overlay = gr.Image(label="concept masks", interactive=False)
        image = gr.Image(label="the image", interactive=False)
    status = gr.Markdown()
    inputs = {"model": model, "prompt": prompt, "concepts": concepts, "method": method, "options": options,
              "seed": seed, "steps": steps, "size": size}  # fmt: skip
    click_job(buttons, run_concept_masks, session, stops, inputs, [overlay, image, status], api_name="concept_masks")
