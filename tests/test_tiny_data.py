"""The tiny model's data: caption grammar, deterministic renderer, and the reader that checks videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tools.tiny_wan.data import (
    COLOURS,
    MOTIONS,
    Caption,
    check_video,
    hue_distance,
    nearest_colour,
    parse_caption,
    read_video,
    render_batch,
    render_video,
    sample_caption,
    vocabulary,
)
from tools.tiny_wan.text import CAPTION_TOKENS, build_tokenizer


def sampled(count: int, seed: int = 0) -> list[Caption]:
    rng = np.random.default_rng(seed)
    return [sample_caption(rng) for _ in range(count)]


def test_captions_round_trip_through_text() -> None:
    for caption in sampled(300):
        assert parse_caption(caption.text) == caption
        assert parse_caption("  " + caption.text.upper() + " ") == caption
    assert {c.motion for c in sampled(300)} == set(MOTIONS)


def test_caption_text_examples() -> None:
    caption = parse_caption("a red circle moving left on a striped blue background")
    assert (caption.colour, caption.shape, caption.motion, caption.pattern, caption.background) == (
        "red",
        "circle",
        "left",
        "striped",
        "blue",
    )
    turning = Caption("orange", "star", "turning", "dotted", "black", target="cyan")
    assert turning.text == "an orange star turning cyan on a dotted black background"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a red circle moving sideways on a plain blue background", "direction must be one of"),
        ("a mauve circle growing on a plain blue background", "colour must be one of"),
        ("a red blob growing on a plain blue background", "shape must be one of"),
        ("a red circle growing on a wavy blue background", "pattern must be one of"),
        ("a red circle turning on a plain blue background", "motion must be"),
        ("red circle", "caption must read"),
    ],
)
def test_bad_captions_name_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_sampled_captions_keep_object_and_background_apart() -> None:
    for caption in sampled(300, seed=1):
        assert caption.background not in (caption.colour, caption.target)
        if caption.motion == "turning":
            assert hue_distance(COLOURS[caption.colour], COLOURS[caption.target]) >= 60


def test_renderer_is_deterministic_and_seed_dependent() -> None:
    text = "a green triangle moving up on a checkered purple background"
    first = render_video(text, seed=7, num_frames=9, height=48, width=64)
    assert first.shape == (9, 48, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, render_video(text, seed=7, num_frames=9, height=48, width=64))
    assert not np.array_equal(first, render_video(text, seed=8, num_frames=9, height=48, width=64))


def test_edges_are_anti_aliased() -> None:
    """A shape over a plain background has pixels strictly between the two colours along its edge."""
    frames = render_video("a red circle growing on a plain black background", seed=0, num_frames=1, height=64, width=64)
    red = frames[0, :, :, 0].astype(int)
    background, shape = red.min(), red.max()
    assert np.count_nonzero((red > background + 10) & (red < shape - 10)) > 10


def test_batch_matches_single_renders() -> None:
    captions = sampled(3, seed=2)
    batch = render_batch(captions, [1, 2, 3], 5, 32, 40, torch.device("cpu"))
    assert batch.shape == (3, 3, 5, 32, 40)
    single = render_video(captions[1], 2, 5, 32, 40)
    as_uint8 = ((batch[1].permute(1, 2, 3, 0) + 1) / 2 * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(as_uint8, single)


@pytest.mark.parametrize(("height", "width"), [(96, 96), (64, 112)])
def test_reader_recovers_colour_and_motion_of_rendered_videos(height: int, width: int) -> None:
    """The statistics the tiny-model test relies on are right on ground truth, for every motion."""
    for index, caption in enumerate(sampled(28, seed=3)):
        frames = render_video(caption, seed=index, num_frames=17, height=height, width=width)
        assert check_video(caption, frames) == {"colour": True, "motion": True}, caption.text


def test_reader_sees_direction_and_colour_change() -> None:
    frames = render_video("a yellow square moving right on a striped gray background", 0, 9, 64, 64)
    reading = read_video(frames)
    assert reading.last_centroid[0] - reading.first_centroid[0] > 0.3
    assert abs(reading.last_centroid[1] - reading.first_centroid[1]) < 0.02
    assert nearest_colour(reading.first_hue) == "yellow"
    turning = read_video(render_video("a blue ring turning red on a plain white background", 0, 9, 64, 64))
    assert (nearest_colour(turning.first_hue), nearest_colour(turning.last_hue)) == ("blue", "red")
    # a wrong caption is caught
    assert check_video("a yellow square moving left on a striped gray background", frames) == {
        "colour": True,
        "motion": False,
    }


def test_reader_finds_nothing_in_a_plain_background() -> None:
    grey = np.full((4, 32, 32, 3), 128, np.uint8)
    assert read_video(grey) is None
    assert check_video("a red circle growing on a plain gray background", grey) == {"colour": False, "motion": False}


def test_tokenizer_covers_the_grammar() -> None:
    tokenizer = build_tokenizer()
    unk = tokenizer.unk_token_id
    for caption in sampled(100, seed=4):
        ids = tokenizer(caption.text, add_special_tokens=True).input_ids
        assert unk not in ids and ids[-1] == tokenizer.eos_token_id
        assert len(ids) <= CAPTION_TOKENS
    assert len(tokenizer) == len(vocabulary()) + 3
    ids = tokenizer("A red, RED circle!").input_ids
    assert ids[:3] == tokenizer("a red red").input_ids[:3]
    assert tokenizer("a mauve circle").input_ids[1] == unk
