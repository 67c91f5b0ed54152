"""The demo's "Concept masks" tab, served on loopback and driven through ``gradio_client``."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from flux_demo_server import flux_demo_client  # noqa: E402
from test_compare import tiny_flux_pipeline  # noqa: E402

# The tab's inputs, in order.
GOOD = {"model": "tiny-flux", "prompt": "a red star left of a blue ring on a striped gray background",
        "concepts": "red star\nblue ring", "method": "topk", "options": "density=0.5, block_size=16", "seed": 0,
        "steps": "2", "size": "32"}  # fmt: skip


@pytest.fixture(scope="module")
def client():
    with flux_demo_client(tiny_flux_pipeline()) as client:
        yield client


def concept_masks(client, **changes):
    return client.predict(*{**GOOD, **changes}.values(), api_name="/concept_masks")


def test_overlay_tints_the_image_where_the_masks_are(client):
    overlay, image, status = concept_masks(client)
    assert "**red star**" in status and "**blue ring**" in status and "topk" in status
    with PIL.Image.open(overlay) as a, PIL.Image.open(image) as b:
        assert a.size == b.size == (32, 32)
        changed = np.any(np.asarray(a.convert("RGB")) != np.asarray(b.convert("RGB")), axis=-1).mean()
    assert 0.0 < changed < 1.0  # some pixels are a concept's, some background


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"concepts": "green square"}, "concept 'green square' is not in the prompt"),
        ({"concepts": " "}, "give a prompt and at least one concept phrase"),
        ({"options": "density=2"}, "density"),
    ],
)
def test_a_bad_input_shows_its_message(client, changes, message):
    overlay, image, status = concept_masks(client, **changes)
    assert overlay is None and image is None and status.startswith("**Error:**") and message in status
