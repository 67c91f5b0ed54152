"""The demo's "Compose" tab and ``dit-accel compose``, on the toy random-weight tiny FLUX (64x64 px)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from single_thread import one_thread  # noqa: F401 (autouse fixture)

from dit_accel import cli
from tools.tiny_flux.build import TOY, build_pipeline
from tools.tiny_flux.data import render_image

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from flux_demo_server import flux_demo_client  # noqa: E402

PROMPT = "a red star left of a green circle on a striped gray background"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compose-inputs")
    background, _ = render_image("a green circle on a striped gray background", 1, 64, 64)
    obj, masks = render_image("a big red star on a dotted blue background", 2, 64, 64)
    paths = {name: folder / f"{name}.png" for name in ("background", "object", "mask", "small_mask", "rgba")}
    PIL.Image.fromarray(background).save(paths["background"])
    PIL.Image.fromarray(obj).save(paths["object"])
    PIL.Image.fromarray(masks[0].astype(np.uint8) * 255).save(paths["mask"])
    PIL.Image.fromarray(masks[0][:32].astype(np.uint8) * 255).save(paths["small_mask"])
    PIL.Image.new("RGBA", (64, 64)).save(paths["rgba"])
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def client():
    with flux_demo_client(build_pipeline(TOY)) as client:
        yield client


def compose(client, files, **changes):
    inputs = {
        "model": "tiny-flux",
        "background": gradio_client.handle_file(files["background"]),
        "object_image": gradio_client.handle_file(files["object"]),
        "object_mask": gradio_client.handle_file(files["mask"]),
        "box": "32,16,64,48",
        "prompt": PROMPT,
        "object_text": "red star",
        "method": "topk",
        "options": "density=0.5, block_size=16",
        "steps": "2",
    } | changes
    return client.predict(*inputs.values(), api_name="/compose")


def test_compose_tab_shows_the_paste_and_the_composite(client, files):
    gallery, status = compose(client, files)
    assert [item["caption"] for item in gallery] == ["paste baseline", "PrimeComposer"]
    images = [np.asarray(PIL.Image.open(item["image"]).convert("RGB")) for item in gallery]
    assert all(image.shape == (64, 64, 3) for image in images)
    assert "topk" in status and "(32, 16, 64, 48)" in status


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"box": "40,0,80,32"}, "must lie inside the 64x64 background"),
        ({"box": "1,2,3"}, "box must be four integers"),
        ({"object_mask": "small_mask"}, "the mask must match the object image"),
        ({"background": "rgba"}, "the background has an alpha channel"),
        ({"object_text": "blue ring"}, "is not among the prompt's"),
        ({"options": "steer_until=2"}, "steer_until"),
    ],
)
def test_compose_tab_names_bad_inputs(client, files, changes, message):
    changes = {k: gradio_client.handle_file(files[v]) if k in ("object_mask", "background") else v
               for k, v in changes.items()}  # fmt: skip
    gallery, status = compose(client, files, **changes)
    assert not gallery and status.startswith("**Error:**") and message in status


def test_compose_command_writes_the_composite(files, tmp_path, monkeypatch, capsys):
    pipe = build_pipeline(TOY)
    monkeypatch.setattr("dit_accel.compose_cli.load_pipeline", lambda *args: pipe)
    argv = ["compose", "--model", "toy", "--background", files["background"], "--object", files["object"],
            "--mask", files["mask"], "--box", "32,16,64,48", "--prompt", PROMPT, "--object-text", "red star",
            "--steps", "2", "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    assert PIL.Image.open(tmp_path / "composite.png").size == (64, 64)
    assert (tmp_path / "pasted.png").is_file()
    assert cli.main([*argv[:-6], "--box", "0,0,80,80", "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "must lie inside the 64x64 background" in capsys.readouterr().err
