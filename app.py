"""dit-accel web demo: compare a method against dense attention, and make style-aligned batches.

    python app.py            # or: make demo
    python app.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --share

Tab 1 runs the same prompt and seed with the stock attention and with a chosen method, and shows
both side by side with PSNR, SSIM and the speedup. Tab 2 generates a style-aligned FLUX batch
(AlignedGen). The default model is the tiny Wan model trained for this project (assets/).
"""

from __future__ import annotations

import argparse

import dit_accel
from dit_accel.demo import DemoSession, run_comparison, run_style_batch
from dit_accel.tiny_model import TINY_MODEL_DIR

ACCELERATION_METHODS = [m for m in dit_accel.list_methods() if m not in ("aligned_gen", "record")]


def build_app(session: DemoSession, default_model: str):
    import gradio as gr

    with gr.Blocks(title="dit-accel") as app:
        gr.Markdown("# dit-accel\nFaster and training-free editing attention for Diffusers video and image models.")
        with gr.Tab("Compare with dense"):
            with gr.Row():
                model = gr.Textbox(default_model, label="model (local folder or hub id)")
                method = gr.Dropdown(ACCELERATION_METHODS, value="topk", label="method")
                options = gr.Textbox("density=0.25", label="options (key=value, comma separated)")
            prompt = gr.Textbox("a red circle moving right on a striped blue background", label="prompt")
            with gr.Row():
                seed = gr.Number(0, label="seed", precision=0)
                steps = gr.Number(None, label="steps (empty: model default)", precision=0)
                frames = gr.Number(None, label="frames", precision=0)
                height = gr.Number(None, label="height", precision=0)
                width = gr.Number(None, label="width", precision=0)
            run = gr.Button("Generate dense and with the method", variant="primary")
            side_by_side = gr.Image(label="dense | method", type="filepath")
            summary = gr.Markdown()
            run.click(
                lambda *a: run_comparison(session, *a),
                [model, method, options, prompt, seed, steps, frames, height, width],
                [side_by_side, summary],
            )
        with gr.Tab("Style-aligned batch (FLUX)"):
            flux_model = gr.Textbox("black-forest-labs/FLUX.1-dev", label="FLUX model")
            style = gr.Textbox("in the style of a watercolor painting", label="style")
            subjects = gr.Textbox("a cat\na lighthouse\na bicycle", lines=4, label="subjects (one per line)")
            style_options = gr.Textbox(
                "style_lambda=1.1", label="aligned_gen options, e.g. attention=topk, density=0.25"
            )
            with gr.Row():
                style_seed = gr.Number(0, label="seed", precision=0)
                style_steps = gr.Number(28, label="steps", precision=0)
                size = gr.Number(1024, label="size", precision=0)
            make = gr.Button("Generate the batch", variant="primary")
            gallery = gr.Gallery(label="image 0 is the style reference", columns=4)
            make.click(
                lambda *a: run_style_batch(session, *a),
                [flux_model, style, subjects, style_options, style_seed, style_steps, size],
                gallery,
            )
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
    build_app(session, args.model).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
