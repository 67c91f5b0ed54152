"""The tiny FLUX model's data and reader: grammar, layouts, renderer with masks, and the reader that
scores images against captions (tools/tiny_flux/data.py, reader.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from single_thread import one_thread  # noqa: F401 (autouse fixture)

from tools.tiny_common.drawing import COLOURS, SHAPES
from tools.tiny_flux.build import TOY, build_tokenizer
from tools.tiny_flux.data import (
    MAX_OBJECTS,
    RELATIONS,
    SIZES,
    Caption,
    Thing,
    make_scene,
    parse_caption,
    render_batch,
    render_image,
    sample_caption,
    shape_stats,
    vocabulary,
)
from tools.tiny_flux.reader import check_image, mask_iou, read_image, read_relation


def sampled(count: int, seed: int = 0, objects: int | None = None) -> list[Caption]:
    rng = np.random.default_rng(seed)
    return [sample_caption(rng, objects) for _ in range(count)]


def test_captions_round_trip_through_text() -> None:
    captions = sampled(300)
    for caption in captions:
        assert parse_caption(caption.text) == caption
        assert parse_caption("  " + caption.text.upper() + " ") == caption
    assert {len(c.things) for c in captions} == {1, 2, 3}
    assert {r for c in captions for r in c.relations} == set(RELATIONS)
    assert {t.size for c in captions for t in c.things} == set(SIZES)


def test_caption_text_examples() -> None:
    caption = parse_caption("a big red star left of a small blue ring on a striped gray background")
    assert caption.things == (Thing("red", "star", "big"), Thing("blue", "ring", "small"))
    assert (caption.relations, caption.pattern, caption.background) == (("left of",), "striped", "gray")
    three = Caption(
        (Thing("orange", "circle"), Thing("green", "square"), Thing("pink", "diamond", "big")),
        ("above", "right of"),
        "dotted",
        "black",
    )
    assert three.text == (
        "an orange circle above a green square right of a big pink diamond on a dotted black background"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a red star beside a blue ring on a plain gray background", "relation must be one of"),
        ("a mauve star on a plain gray background", "colour must be one of"),
        ("a red blob on a plain gray background", "shape must be one of"),
        ("a huge red star on a plain gray background", "colour must be one of"),
        ("a red star left of a red ring on a plain gray background", "different colours"),
        ("a red star on a wavy gray background", "pattern must be one of"),
        ("red star left of a blue ring on a plain gray background", "must start with 'a' or 'an'"),
        ("a red star", "caption must read"),
        (
            "a red star above a blue ring above a green circle above a pink square on a plain gray background",
            "1 to 3 objects",
        ),
    ],
)
def test_bad_captions_name_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_sampled_captions_keep_objects_and_background_apart() -> None:
    for caption in sampled(300, seed=1):
        colours = [t.colour for t in caption.things]
        assert len(set(colours)) == len(colours) and caption.background not in colours


def test_tokenizer_covers_the_grammar() -> None:
    tokenizer = build_tokenizer(TOY)
    for caption in sampled(200, seed=2):
        ids = tokenizer(caption.text).input_ids
        assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id
        assert len(ids) <= TOY.text_length
    assert len(tokenizer) == len(vocabulary()) + 3


def test_shape_statistics_match_the_distance_functions() -> None:
    """Centroid and filled area of the unit shapes against their closed forms; the reach bounds the
    farthest ink from above (layouts rely on it), by at most a grid pixel."""
    circle, ring, square = shape_stats("circle"), shape_stats("ring"), shape_stats("square")
    assert circle.filled_area == pytest.approx(np.pi, rel=0.01) and ring.filled_area == pytest.approx(np.pi, rel=0.01)
    assert square.filled_area == pytest.approx(1.76**2, rel=0.01)
    for stats, reach in ((circle, 1.0), (ring, 1.0), (square, 0.88 * np.sqrt(2))):
        assert reach <= stats.reach <= reach + 0.015
    for shape in SHAPES:
        assert np.hypot(*shape_stats(shape).centroid) < 0.01  # every shape is centred on its origin


@pytest.mark.parametrize("aspect", [1.0, 1.5])
def test_layouts_keep_objects_apart_inside_and_in_their_relations(aspect: float) -> None:
    """Three big objects in a row fit; every pair is apart, every object inside, every relation holds
    by the dominant axis."""
    row = parse_caption(
        "a big red star left of a big blue triangle left of a big green diamond on a plain gray background"
    )
    for seed, caption in enumerate([row, *sampled(150, seed=3)]):
        scene = make_scene(caption, seed, aspect)
        room = np.array([max(1.0, aspect), max(1.0, 1.0 / aspect)])
        points = np.array(scene.positions) * room
        reach = np.array([s * shape_stats(t.shape).reach for s, t in zip(scene.sizes, caption.things, strict=True)])
        assert ((points - reach[:, None] >= 0) & (points + reach[:, None] <= room)).all()
        for i in range(len(points)):
            for j in range(i + 1, len(points)):
                assert np.hypot(*(points[i] - points[j])) >= reach[i] + reach[j]
        for i, relation in enumerate(caption.relations):
            dx, dy = points[i] - points[i + 1]
            direction = (np.sign(dx), 0.0) if abs(dx) > abs(dy) else (0.0, np.sign(dy))
            assert direction == RELATIONS[relation], (caption.text, relation)
        for size, thing in zip(scene.sizes, caption.things, strict=True):
            assert SIZES[thing.size][0] <= size <= SIZES[thing.size][1]


def test_renderer_is_deterministic_and_batches_match_single_renders() -> None:
    captions = sampled(3, seed=4, objects=3)
    image, masks = render_image(captions[1], seed=2, height=48, width=64)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and masks.shape == (3, 48, 64)
    again, _ = render_image(captions[1], seed=2, height=48, width=64)
    np.testing.assert_array_equal(image, again)
    assert not np.array_equal(image, render_image(captions[1], seed=3, height=48, width=64)[0])
    batch, batch_masks = render_batch(captions, [1, 2, 3], 48, 64, torch.device("cpu"))
    assert batch.shape == (3, 3, 48, 64) and batch_masks.shape == (3, MAX_OBJECTS, 48, 64)
    as_uint8 = ((batch[1].permute(1, 2, 0) + 1) / 2 * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(as_uint8, image)
    np.testing.assert_array_equal(batch_masks[1].numpy() >= 0.5, masks)


def test_masks_are_the_objects_pixels() -> None:
    """Inside a mask the image has the object's colour; masks of one image are disjoint; absent
    objects have empty masks."""
    caption = parse_caption("a big red square above a green circle on a striped blue background")
    image, masks = render_image(caption, seed=5)
    assert masks.shape == (2, 128, 128) and not (masks[0] & masks[1]).any()
    for thing, mask in zip(caption.things, masks, strict=True):
        inner = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
        expected = {"red": (255, 0, 0), "green": (0, 255, 0)}[thing.colour]
        assert (image[inner] == expected).all()
    _, padded = render_batch([caption], [5], 128, 128, torch.device("cpu"))
    assert padded[0, 2].sum() == 0


def test_reader_agrees_with_clean_renders() -> None:
    """At least 95% full agreement (shape, size, relations, count) and mask IoU of at least 0.9 on
    the generator's own images, over every object count."""
    captions = sampled(45, seed=6)
    agree, ious = [], []
    for seed, caption in enumerate(captions):
        image, masks = render_image(caption, seed)
        agree.append(check_image(caption, image)["exact"])
        found = {f.colour: f for f in read_image(image)}
        ious += [mask_iou(found[t.colour].mask, m) for t, m in zip(caption.things, masks, strict=True)]
    assert np.mean(agree) >= 0.95
    assert np.mean(ious) >= 0.9 and min(ious) >= 0.75


def test_reader_catches_wrong_captions() -> None:
    caption = parse_caption("a big red star left of a small blue ring below a green square on a plain gray background")
    image, _ = render_image(caption, seed=7)
    assert check_image(caption, image)["exact"]
    things = list(caption.things)
    wrong = {
        "shape": dataclasses.replace(caption, things=(Thing("red", "circle", "big"), *things[1:])),
        "size": dataclasses.replace(caption, things=(Thing("red", "star", "small"), *things[1:])),
        "relation": dataclasses.replace(caption, relations=("right of", "below")),
        "found": dataclasses.replace(caption, things=(Thing("yellow", "star", "big"), *things[1:])),
    }
    for key, changed in wrong.items():
        result = check_image(changed, image)
        assert not result[key] and not result["exact"], key
    fewer = Caption(caption.things[:2], caption.relations[:1], "plain", "gray")
    result = check_image(fewer, image)
    assert result["found"] and result["relation"] and not result["count"] and not result["adherence"]


def test_reader_splits_touching_objects_and_ignores_backgrounds() -> None:
    image = np.zeros((64, 64, 3), np.uint8) + 90
    assert read_image(image) == []
    image[20:40, 12:32] = (255, 0, 0)
    image[20:40, 32:52] = (0, 0, 255)
    found = sorted(read_image(image), key=lambda f: f.centroid[0])
    assert [(f.colour, f.shape) for f in found] == [("red", "square"), ("blue", "square")]
    assert read_relation(found[0], found[1]) == "left of"
    assert check_image("a red square left of a blue square on a plain gray background", image)["adherence"]


def test_reader_tolerates_blur() -> None:
    """Generated images are softer than renders: after a one-pixel blur the reader still agrees on
    colour, shape and relations (sizes aside) for most images."""
    from scipy import ndimage

    captions = sampled(20, seed=8, objects=2)
    agree = []
    for seed, caption in enumerate(captions):
        image = render_image(caption, seed)[0].astype(np.float32) / 255
        agree.append(check_image(caption, ndimage.gaussian_filter(image, (1.0, 1.0, 0)))["adherence"])
    assert np.mean(agree) >= 0.9


def test_every_colour_is_read_as_itself() -> None:
    for colour in COLOURS:
        image, _ = render_image(f"a big {colour} circle on a plain gray background", seed=0, height=64, width=64)
        assert [f.colour for f in read_image(image)] == [colour]
