"""The web demo (app.py) served on loopback, driven as a user would: through ``gradio_client`` and,
where Debian's chromium and Playwright are installed, a headless browser.

One server for the module, holding the 1.5 MB toy Wan pipeline under the name "toy" (nothing loads
from disk or the network), so every call is fast.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tools.tiny_wan.build import TOY, build_pipeline

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from dit_accel.demo import DemoSession  # noqa: E402

APP_PATH = Path(__file__).resolve().parents[1] / "app.py"
PROMPT = "a red circle moving right on a striped blue background"
# The compare tab's inputs, in order. 9 frames of 64x64 make 3x4x4 = 48 toy video tokens: 3 blocks of 16.
GOOD = {"model": "toy", "method": "topk", "options": "density=0.5, block_size=16", "prompt": PROMPT,
        "seed": 0, "steps": "1", "frames": "9", "height": "64", "width": "64"}  # fmt: skip


def _load_app_module():
    spec = importlib.util.spec_from_file_location("dit_accel_app", APP_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server():
    """The demo on 127.0.0.1 at a free port; yields its URL."""
    session = DemoSession(device="cpu", dtype="float32")
    pipe = build_pipeline(TOY, seed=0)
    pipe.set_progress_bar_config(disable=True)
    session._pipes["toy"] = pipe
    app = _load_app_module().build_app(session, "toy")
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, show_error=True, quiet=True)
    yield app.local_url
    app.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


def compare(client, **changes):
    return client.predict(*{**GOOD, **changes}.values(), api_name="/compare")


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
        ({"model": "/no/such/model"}, "no model folder at /no/such/model"),
    ],
)
def test_a_bad_input_shows_its_message_in_place_of_the_result(client, changes, message):
    image, summary = compare(client, **changes)
    assert image is None
    assert message in summary


def test_an_unknown_method_is_refused_with_its_name(client):
    with pytest.raises(gradio_client.exceptions.AppError, match="nope is not in the list of choices"):
        compare(client, method="nope")


def test_a_broken_model_folder_shows_its_message(client, tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    image, summary = compare(client, model=str(tmp_path))
    assert image is None and f"could not load a Diffusers pipeline from {tmp_path}" in summary


def test_the_style_tab_says_what_it_needs(client):
    for model, subjects, message in (("", "a cat\na dog", "give a FLUX.1 pipeline"), ("x/y", "a cat", "two subjects")):
        gallery, status = client.predict(model, "in ink", subjects, "", 0, "", "", api_name="/style")
        assert not gallery and message in status


def test_the_server_keeps_serving_after_errors(client):
    compare(client, height="7")
    image, summary = compare(client)
    assert Path(image).is_file()
    assert "PSNR" in summary and "topk" in summary
    # Too few tokens for topk's default 128-token blocks: the summary says so beside the numbers.
    _, summary = compare(client, options="density=0.5")
    # 2 layers x 1 step x 2 (classifier-free guidance) = 4 attention calls
    assert "topk ran dense for 4 attention call(s): only 48 video tokens: too few" in summary


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
    """A page with the compare tab's fields set and its button pressed."""
    page = browser.new_page()
    page.goto(server)
    for label, value in fields.items():
        page.get_by_label(label).fill(value)
    page.get_by_role("button", name="Generate dense and with the method").click()
    return page


def test_the_message_is_visible_in_a_browser(browser, server):
    page = _start(browser, server, height="7")
    message = page.get_by_text("height must be a multiple of 16")
    message.wait_for(state="visible", timeout=30_000)
    assert message.is_visible()
    page.close()


LONG = {"model": "toy", "steps": "100000", "frames": "9", "height": "64", "width": "64"}


def test_stop_ends_a_job_at_its_next_step(browser, server):
    page = _start(browser, server, **LONG)
    page.get_by_text("dense: step").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("during the dense run").wait_for(timeout=60_000)
    page.close()


def test_a_closed_page_stops_its_job_and_frees_the_queue(browser, server, client):
    page = _start(browser, server, **LONG)
    page.get_by_text("dense: step").first.wait_for(timeout=60_000)
    page.close()  # 100,000 steps would take hours: the next job runs only if this one stopped
    image, summary = client.submit(*GOOD.values(), api_name="/compare").result(timeout=120)
    assert Path(image).is_file() and "PSNR" in summary


def test_jobs_run_one_at_a_time_in_a_bounded_queue():
    """The demo queues at most QUEUE_SIZE waiting jobs and runs one at a time (a CPU runs one well)."""
    module = _load_app_module()
    app = module.build_app(DemoSession(device="cpu", dtype="float32"), "toy")
    assert module.QUEUE_SIZE == 8
    assert (app._queue.max_size, app._queue.default_concurrency_limit) == (module.QUEUE_SIZE, 1)
