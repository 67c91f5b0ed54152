"""The demo's "Multi-subject" tab, served on loopback and driven through ``gradio_client``."""

from __future__ import annotations

import PIL.Image
import pytest

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from flux_demo_server import flux_demo_client  # noqa: E402
from test_compare import tiny_flux_pipeline  # noqa: E402

# The tab's inputs, in order.
GOOD = {"model": "tiny-flux", "references": "a cat\na dog", "reference_boxes": "0,0,0.5,0.5\n0.5,0.5,1,1",
        "targets": "a cat and a dog", "target_boxes": "0.5,0,1,0.5; 0,0.5,0.5,1", "method": "topk",
        "options": "density=0.5, block_size=16, reposition=crop", "seed": 0, "steps": "2", "size": "32"}  # fmt: skip


@pytest.fixture(scope="module")
def client():
    with flux_demo_client(tiny_flux_pipeline()) as client:
        yield client


def multi_subject(client, **changes):
    return client.predict(*{**GOOD, **changes}.values(), api_name="/multi_subject")


def test_the_batch_comes_back_references_first(client):
    gallery, status = multi_subject(client)
    assert len(gallery) == 3 and "2 reference(s), then 1 target(s)" in status and "topk" in status
    for item in gallery:
        with PIL.Image.open(item["image"]) as image:
            assert image.size == (32, 32)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reference_boxes": "0,0,0.5,0.5"}, "give one box line per reference (2) and per target (1)"),
        ({"target_boxes": "0.5,0,1,0.5"}, r"target_regions[0] must hold one region per subject"),
        ({"target_boxes": "left; right"}, "target box line 1: boxes are x0,y0,x1,y1"),
        ({"reference_boxes": "0.6,0,0.5,0.5\n0.5,0.5,1,1"}, "needs 0 <= x0 < x1 <= 1"),
        ({"options": "reposition=warp"}, "reposition must be one of"),
        ({"targets": " "}, "give at least one reference prompt and one target prompt"),
    ],
)
def test_a_bad_input_shows_its_message(client, changes, message):
    gallery, status = multi_subject(client, **changes)
    assert not gallery and status.startswith("**Error:**") and message in status
