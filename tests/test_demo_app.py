"""The web demo (dit_accel.demo_app) served on loopback, driven as a user would: through ``gradio_client``
and, where Debian's chromium and Playwright are installed, a headless browser.

One server for the module, serving the 1.5 MB toy Wan pipeline as "toy", a tiny random-weight FLUX
pipeline as "tiny-flux" and a broken model folder (nothing loads from the network), so every call is
fast: 9 frames of 64x64 make 3x4x4 = 48 toy video tokens, 3 blocks of 16.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tools.tiny_wan.build import TOY, build_pipeline

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from test_compare import tiny_flux_pipeline  # noqa: E402

import dit_accel.compare  # noqa: E402
from dit_accel import demo_app  # noqa: E402
from dit_accel.demo import NO_FLUX_MODEL, DemoSession  # noqa: E402
from dit_accel.image_upload import MAX_UPLOAD_MB  # noqa: E402

PROMPT = "a red circle moving right on a striped blue background"
# The Accelerate tab's inputs, in order.
GOOD = {"model": "toy", "method": "topk", "options": "density=0.5, block_size=16", "prompt": PROMPT, "seed": 0,
        "steps": "2", "frames": "9", "height": "64", "width": "64",
        "map_layer": "", "map_step": "", "map_head": 0}  # fmt: skip
# The style tab's inputs, in order.
STYLE = {"model": "tiny-flux", "style": "in ink", "subjects": "a cat\na dog", "method": "topk",
         "options": "density=0.5, block_size=16", "style_image": None,
         "seed": 0, "steps": "2", "size": "32"}  # fmt: skip


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("broken-model")
    (folder / "model_index.json").write_text("{not json")
    return str(folder)


@pytest.fixture(scope="module")
def server(broken_model):
    """The demo on 127.0.0.1 at a free port, with the demo's upload limit; yields its URL."""
    session = DemoSession(["toy", "tiny-flux", broken_model], device="cpu", dtype="float32")
    session.add("toy", build_pipeline(TOY, seed=0))
    session.add("tiny-flux", tiny_flux_pipeline())
    app = demo_app.build_app(session)
    demo_app.launch(app, prevent_thread_lock=True, quiet=True)
    yield app.local_url
    app.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


def compare(client, **changes):
    return client.predict(*{**GOOD, **changes}.values(), api_name="/compare")


def style(client, **changes):
    return client.predict(*{**STYLE, **changes}.values(), api_name="/style")


def test_generate_shows_both_videos_the_metrics_per_frame_and_the_block_map(client):
    dense, method, summary, psnr, ssim, picture, caption = compare(client)
    assert Path(dense).suffix == Path(method).suffix == ".webm"
    assert Path(dense).stat().st_size > 0 and Path(method).stat().st_size > 0
    assert "PSNR" in summary and "SSIM" in summary and "topk" in summary and "x)" in summary
    assert [row[0] for row in psnr["data"]] == list(range(9)) and len(ssim["data"]) == 9
    assert all(0 < row[1] <= 1 for row in ssim["data"])
    with PIL.Image.open(picture) as image:
        assert image.width >= 3 * 85  # 3 key blocks of 85 px
    assert caption == (
        "Block map of layer 1, step 1, head 0 (rows: query blocks, columns: key blocks): skipped 33%, exact 67%"
    )
    # Another head of the same map, from the session's kept map, without running again.
    _, caption = client.predict(1, api_name="/block_map")
    assert caption.startswith("Block map of layer 1, step 1, head 1")
    assert client.predict(7, api_name="/block_map")[1] == "**Error:** head must be in [0, 1], got 7"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "  "}, "prompt must be non-empty text"),
        ({"height": "7"}, "height must be a multiple of 16"),
        ({"frames": "100000"}, "num_frames must be 4k+1"),
        ({"steps": "abc"}, "steps must be a whole number, or empty for the default"),
        ({"options": "density=-1"}, "density must be in"),
        ({"options": "density=abc"}, "density must be a number"),
        ({"options": "densty=0.2"}, "densty"),
        ({"map_layer": "9"}, "block map layer must be in [0, 1] for this model, got 9"),
    ],
)
def test_a_bad_input_shows_its_message_in_place_of_the_result(client, changes, message):
    dense, method, summary, *_ = compare(client, **changes)
    assert dense is None and method is None
    assert summary.startswith("**Error:**") and message in summary


@pytest.mark.parametrize(("name", "value"), [("method", "nope"), ("model", "/etc"), ("model", "../toy")])
def test_only_listed_methods_and_models_are_accepted(client, name, value):
    with pytest.raises(gradio_client.exceptions.AppError, match=f"{value} is not in the list of choices"):
        compare(client, **{name: value})


def test_a_broken_model_folder_shows_its_message(client, broken_model):
    dense, _, summary, *_ = compare(client, model=broken_model)
    assert dense is None and f"could not load a Diffusers pipeline from {broken_model}" in summary


def test_out_of_gpu_memory_shows_a_message_and_the_server_keeps_serving(client, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(dit_accel.compare, "timed_run", out_of_memory)
    _, _, summary, *_ = compare(client)
    assert summary.startswith("**Error:** out of GPU memory for this request (the server freed what it could")
    monkeypatch.undo()
    dense, _, summary, *_ = compare(client, frames="1")  # one frame: a cheap run
    assert Path(dense).is_file() and "PSNR" in summary


def test_the_style_tab_makes_a_batch_with_its_score_through_a_method(client, tmp_path):
    reference = tmp_path / "style.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(reference)
    preview, message = client.predict(gradio_client.handle_file(str(reference)), api_name="/check_style_image")
    assert message == "" and PIL.Image.open(preview).size == (50, 40)
    for image in (None, gradio_client.handle_file(str(reference))):
        gallery, status = style(client, style_image=image)
        assert len(gallery) == 2 and all(Path(item["image"]).is_file() for item in gallery)
        assert status.startswith("Style consistency of the 2 images (lower is more consistent): Gram distance")


def test_the_style_tab_says_what_it_needs(client):
    gallery, status = style(client, model=None)
    assert not gallery and status == f"**Error:** {NO_FLUX_MODEL}"
    gallery, status = style(client, subjects="a cat")
    assert not gallery and "give at least two subjects" in status
    with pytest.raises(gradio_client.exceptions.AppError, match="toy is not in the list of choices"):
        style(client, model="toy")  # video models are not offered for the style batch


def test_bad_style_images_get_a_message_and_huge_uploads_are_refused(client, tmp_path):
    rgba = tmp_path / "rgba.png"
    PIL.Image.new("RGBA", (20, 20)).save(rgba)
    preview, message = client.predict(gradio_client.handle_file(str(rgba)), api_name="/check_style_image")
    assert preview is None and "the style image has an alpha channel (transparency)" in message
    gallery, status = style(client, style_image=gradio_client.handle_file(str(rgba)))
    assert not gallery and "the style image has an alpha channel" in status
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    _, message = client.predict(gradio_client.handle_file(str(junk)), api_name="/check_style_image")
    assert "the style image could not be read as an image" in message
    huge = tmp_path / "huge.png"
    with huge.open("wb") as file:
        file.truncate((MAX_UPLOAD_MB + 1) * 2**20)
    with pytest.raises(Exception, match=r"(?i)file.*(large|size)"):  # refused by the server's upload limit
        client.predict(gradio_client.handle_file(str(huge)), api_name="/check_style_image")
    assert compare(client, height="7")[2].startswith("**Error:**")  # still serving


def test_jobs_run_one_at_a_time_in_a_bounded_queue():
    """The demo queues at most QUEUE_SIZE waiting jobs and runs one at a time (a CPU runs one well)."""
    app = demo_app.build_app(DemoSession(["toy"], device="cpu", dtype="float32"))
    assert demo_app.QUEUE_SIZE == 8
    assert (app._queue.max_size, app._queue.default_concurrency_limit) == (demo_app.QUEUE_SIZE, 1)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by Playwright; skipped, with the reason, where either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    if _chromium() is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


def _start(browser, server, **fields):
    """A page with the Accelerate tab's fields set and Generate pressed."""
    page = browser.new_page()
    page.goto(server)
    for label, value in fields.items():
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Generate", exact=True).click()
    return page


SMALL = {"steps": "2", "frames": "9", "height": "64", "width": "64"}


def test_generate_in_a_browser_plays_both_videos_and_shows_the_metrics(browser, server):
    page = browser.new_page()
    page.goto(server)
    block_size = page.get_by_label("block_size")  # a widget built from topk's options dataclass (label + help)
    block_size.fill("16")
    block_size.blur()
    options = page.get_by_label("options given to the method")
    page.wait_for_function("el => el.value === 'block_size=16'", arg=options.element_handle(), timeout=10_000)
    for label, value in SMALL.items():
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_text("PSNR", exact=False).first.wait_for(timeout=90_000)
    # Both videos load and decode in the browser (a frame size is known only once decoding started).
    page.wait_for_function(
        "() => [...document.querySelectorAll('video')].filter(v => v.videoWidth > 0).length === 2", timeout=30_000
    )
    assert page.get_by_text("Block map of layer 1, step 1, head 0").is_visible()
    assert page.locator("svg, canvas").count() >= 2  # the two per-frame plots
    page.close()


def test_the_message_is_visible_in_a_browser(browser, server):
    page = _start(browser, server, height="7")
    message = page.get_by_text("height must be a multiple of 16")
    message.wait_for(state="visible", timeout=30_000)
    assert message.is_visible()
    page.close()


LONG = {"steps": "100000", "frames": "9", "height": "64", "width": "64"}


def test_stop_ends_a_job_at_its_next_step(browser, server):
    page = _start(browser, server, **LONG)
    page.get_by_text("dense: step").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Stop").first.click()
    page.get_by_text("during the dense run").wait_for(timeout=60_000)
    page.close()


def test_a_closed_page_stops_its_job_and_frees_the_queue(browser, server, client):
    page = _start(browser, server, **LONG)
    page.get_by_text("dense: step").first.wait_for(timeout=60_000)
    page.close()  # 100,000 steps would take hours: the next job runs only if this one stopped
    job = client.submit(*{**GOOD, "frames": "1"}.values(), api_name="/compare")
    dense, _, summary, *_ = job.result(timeout=120)
    assert Path(dense).is_file() and "PSNR" in summary


def test_the_style_tab_speaks_the_tiny_flux_grammar_when_it_is_the_default_model():
    from dit_accel.demo_app import GENERIC_STYLE_EXAMPLE, TINY_FLUX_EXAMPLE
    from dit_accel.tiny_model import TINY_FLUX_DIR

    def style_defaults(models):
        app = demo_app.build_app(DemoSession(models, device="cpu"))
        boxes = {block.label: block.value for block in app.blocks.values() if isinstance(block, gradio.Textbox)}
        return boxes["style"], boxes["subjects (one per line)"]

    assert style_defaults([str(TINY_FLUX_DIR)]) == TINY_FLUX_EXAMPLE
    assert style_defaults(["no-such-org/flux-like"]) == GENERIC_STYLE_EXAMPLE
