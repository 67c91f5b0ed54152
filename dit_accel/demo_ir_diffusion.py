"""The demo's "Multi-subject" tab: an IR-Diffusion FLUX batch, its attention through any method.

The user writes one reference prompt per subject and the target prompts, and places each subject with
a box ``x0,y0,x1,y1`` (fractions of the image): one box per reference, and per target one box per
subject joined by ``;``. The batch comes back references first, then targets.
"""

from __future__ import annotations

import gradio as gr
import PIL.Image
import torch

from dit_accel.compare import StepCallback
from dit_accel.demo import DemoSession, flux_image_call, parse_options
from dit_accel.demo_jobs import StopFlags
from dit_accel.demo_widgets import click_job, flux_model_row, job_buttons, seed_steps_size_row
from dit_accel.editing import ir_batch
from dit_accel.ir_cli import parse_box
from dit_accel.registry import build_config

REFERENCES = "a red star on a plain gray background\na blue ring on a plain gray background"
TARGETS = "a red star left of a blue ring on a striped black background"
REFERENCE_BOXES = "0.3,0.3,0.7,0.7\n0.3,0.3,0.7,0.7"
TARGET_BOXES = "0.05,0.3,0.45,0.7; 0.55,0.3,0.95,0.7"


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _boxes(name: str, line: str) -> list[tuple[float, ...]]:
    boxes = [parse_box(part.strip()) for part in line.split(";")]
    if any(box is None for box in boxes):
        raise ValueError(f"{name}: boxes are x0,y0,x1,y1 (fractions of the image) joined by ';', got {line!r}")
    return boxes


def run_multi_subject(
    session: DemoSession,
    model: str | None,
    references_text: str,
    reference_boxes_text: str,
    targets_text: str,
    target_boxes_text: str,
    method: str,
    options_text: str,
    seed: float,
    steps: str | int | None = None,
    size: str | int | None = None,
    on_step: StepCallback | None = None,
) -> tuple[list[PIL.Image.Image], str]:
    """The IR-Diffusion batch ``[references..., targets...]`` and a one-line report."""
    session.check_chosen(model)
    references, targets = _lines(references_text), _lines(targets_text)
    reference_lines, target_lines = _lines(reference_boxes_text), _lines(target_boxes_text)
    if not references or not targets:
        raise ValueError("give at least one reference prompt and one target prompt, one per line")
    if len(reference_lines) != len(references) or len(target_lines) != len(targets):
        raise ValueError(
            f"give one box line per reference ({len(references)}) and per target ({len(targets)}); got "
            f"{len(reference_lines)} and {len(target_lines)}"
        )
    reference_regions = [_boxes(f"reference box line {i + 1}", line)[0] for i, line in enumerate(reference_lines)]
    target_regions = [_boxes(f"target box line {i + 1}", line) for i, line in enumerate(target_lines)]
    options = {"attention": method, **parse_options(options_text)}
    regions = {"reference_regions": reference_regions, "target_regions": target_regions}
    build_config("ir_diffusion", **regions, **options)  # a bad option or box fails before the model loads
    needs = "the multi-subject batch needs a FLUX.1 model"
    pipe, call = flux_image_call(session, model, steps, size, needs, "multi-subject batch", on_step)
    generators = [torch.Generator().manual_seed(int(seed) + i) for i in range(len(references) + len(targets))]
    images = ir_batch(
        pipe, references, targets, reference_regions, target_regions, options=options,
        generator=generators, output_type="pil", **call,
    )  # fmt: skip
    report = f"{len(references)} reference(s), then {len(targets)} target(s), attention through **{method}**."
    return list(images), report


def build_ir_diffusion_tab(session: DemoSession, stops: StopFlags) -> None:
    """The "Multi-subject" tab."""
    model, method = flux_model_row(
        session,
        "Each reference shows one subject; the targets show the subjects again, kept the same (IR-Diffusion: "
        "isolation and reposition attention). Boxes are x0,y0,x1,y1 in fractions of the image.",
    )
    with gr.Row():
        references = gr.Textbox(REFERENCES, lines=3, label="references (one subject per line)")
        reference_boxes = gr.Textbox(REFERENCE_BOXES, lines=3, label="reference boxes (one per line)")
    with gr.Row():
        targets = gr.Textbox(TARGETS, lines=3, label="targets (one per line)")
        target_boxes = gr.Textbox(TARGET_BOXES, lines=3, label="target boxes (per line: one per subject, ';')")
    options = gr.Textbox(
        "reposition=rope, reference_scale=2.0", label="options: ir_diffusion's and the method's, key=value"
    )
    seed, steps, size = seed_steps_size_row()
    buttons = job_buttons("Generate the batch")
    gallery = gr.Gallery(label="the batch (references, then targets)", columns=4)
    status = gr.Markdown()
    inputs = {"model": model, "references": references, "reference_boxes": reference_boxes, "targets": targets,
              "target_boxes": target_boxes, "method": method, "options": options, "seed": seed, "steps": steps,
              "size": size}  # fmt: skip
    click_job(buttons, run_multi_subject, session, stops, inputs, [gallery, status], api_name="multi_subject")
