"""Procedural text-video data for the tiny Wan model: caption grammar, renderer, and reader.

One object on a patterned background, described by a caption from a small grammar::

    a red circle moving left on a striped blue background
    an orange star growing on a plain gray background
    a green ring turning purple on a dotted black background

The renderer turns ``(caption, seed)`` into a video deterministically: the seed draws where the
object starts, how far it goes, its size and the background pattern's scale and phase; the caption
fixes what is drawn. Colours, shapes and background patterns come from
:mod:`tools.tiny_common.drawing` (shared with the tiny FLUX images): signed-distance shapes with
anti-aliased edges, rendered in plain torch, so a training batch is drawn on the GPU that trains on it.

Shape colours are saturated and bright (HSV saturation and value 1); backgrounds are muted (saturation
at most 0.45, value at most 0.55, or grey). The reader uses that contract to find the object in any
video, real or generated: the pixels with high saturation and value, their hue and their centroid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tools.tiny_common.drawing import (
    BACKGROUND_COLOURS,
    COLOURS,
    GREYS,
    PATTERNS,
    SHAPE_EXTENT,
    SHAPES,
    article,
    as_unit_float,
    background_numbers,
    choose,
    coverage,
    draw_backgrounds,
    host_to_device,
    hue_distance,
    hue_to_rgb,
    mean_hue,
    nearest_colour,
    object_pixels,
    shape_distance,
)

DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
MOTIONS: tuple[str, ...] = (*DIRECTIONS, "growing", "shrinking", "turning")
# A colour change must be at least this large (degrees) to be captioned and to be read as one.
MIN_TURN_DEGREES = 60.0


@dataclass(frozen=True)
class Caption:
    """What one video shows. ``target`` is the final colour of a ``turning`` object, else None."""

    colour: str
    shape: str
    motion: str
    pattern: str
    background: str
    target: str | None = None

    def __post_init__(self) -> None:
        choose("colour", self.colour, tuple(COLOURS))
        choose("shape", self.shape, SHAPES)
        choose("motion", self.motion, MOTIONS)
        choose("pattern", self.pattern, PATTERNS)
        choose("background", self.background, BACKGROUND_COLOURS)
        if self.motion == "turning":
            choose("target", str(self.target), tuple(COLOURS))
        elif self.target is not None:
            raise ValueError(f"target is only allowed with motion 'turning', got motion {self.motion!r}")

    @property
    def motion_phrase(self) -> str:
        if self.motion in DIRECTIONS:
            return f"moving {self.motion}"
        return f"turning {self.target}" if self.motion == "turning" else self.motion

    @property
    def text(self) -> str:
        return (
            f"{article(self.colour)} {self.colour} {self.shape} {self.motion_phrase} "
            f"on a {self.pattern} {self.background} background"
        )

    def __str__(self) -> str:
        return self.text


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order (the tokenizer's vocabulary)."""
    words = ["a", "an", "on", "background", "moving", *COLOURS, *GREYS, *SHAPES, *MOTIONS, *PATTERNS]
    return list(dict.fromkeys(words))


def parse_caption(text: str) -> Caption:
    """The :class:`Caption` of a grammar sentence (case and extra spaces ignored); ``ValueError`` otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}")
    words = text.lower().split()
    form = "'a|an <colour> <shape> <motion> on a <pattern> <background> background'"
    if len(words) < 9 or words[0] not in ("a", "an") or words[-5:-3] != ["on", "a"] or words[-1] != "background":
        raise ValueError(f"caption must read {form}; got {text!r}")
    colour, shape, *motion_words = words[1:-5]
    target = None
    if motion_words[:1] == ["moving"] and len(motion_words) == 2:
        motion = motion_words[1]
        choose("direction", motion, tuple(DIRECTIONS))
    elif motion_words[:1] == ["turning"] and len(motion_words) == 2:
        motion, target = "turning", motion_words[1]
    elif len(motion_words) == 1:
        motion = motion_words[0]
        choose("motion", motion, ("growing", "shrinking"))
    else:
        raise ValueError(
            f"motion must be 'moving <direction>', 'growing', 'shrinking' or 'turning <colour>'; got {text!r}"
        )
    return Caption(colour, shape, motion, words[-3], words[-2], target)


def sample_caption(rng: np.random.Generator) -> Caption:
    """A random caption; the background never has the object's colour, colour changes are large."""
    colour = str(rng.choice(list(COLOURS)))
    motion = str(rng.choice(MOTIONS))
    target = None
    if motion == "turning":
        far = [c for c in COLOURS if hue_distance(COLOURS[c], COLOURS[colour]) >= MIN_TURN_DEGREES]
        target = str(rng.choice(far))
    backgrounds = [b for b in BACKGROUND_COLOURS if b not in (colour, target)]
    return Caption(
        colour=colour,
        shape=str(rng.choice(SHAPES)),
        motion=motion,
        pattern=str(rng.choice(PATTERNS)),
        background=str(rng.choice(backgrounds)),
        target=target,
    )


# --------------------------------------------------------------------------------------------------
# Scene: the seed's choices, in units relative to the frame (x, y in [0, 1]; size relative to the
# shorter side), so one scene renders at any resolution.


@dataclass(frozen=True)
class Scene:
    caption: Caption
    start: tuple[float, float]
    end: tuple[float, float]
    size: tuple[float, float]
    period: float
    stripe_angle: float
    phase: tuple[float, float]


def make_scene(caption: Caption, seed: int, aspect: float = 1.0) -> Scene:
    """Draw the seed's choices for ``caption``; ``aspect`` is width / height of the frames to come."""
    rng = np.random.default_rng(seed)
    if caption.motion == "growing" or caption.motion == "shrinking":
        small = rng.uniform(0.07, 0.1)
        big = small * rng.uniform(2.0, 2.5)
        size = (small, big) if caption.motion == "growing" else (big, small)
    else:
        s = rng.uniform(0.1, 0.17)
        size = (s, s)
    # Margins keep the largest extent inside the frame; sizes are relative to the shorter side.
    short_over_w, short_over_h = min(1.0, 1.0 / aspect), min(1.0, aspect)
    margin = (SHAPE_EXTENT * max(size) * short_over_w, SHAPE_EXTENT * max(size) * short_over_h)
    if caption.motion in DIRECTIONS:
        dx, dy = DIRECTIONS[caption.motion]
        axis = 0 if dx else 1
        room = 1.0 - 2.0 * margin[axis]
        travel = min(rng.uniform(0.35, 0.5), room)
        begin = rng.uniform(margin[axis], 1.0 - margin[axis] - travel)
        across = rng.uniform(margin[1 - axis], 1.0 - margin[1 - axis])
        a, b = (begin, begin + travel) if (dx + dy) > 0 else (begin + travel, begin)
        start, end = ((a, across), (b, across)) if axis == 0 else ((across, a), (across, b))
    else:
        centre = (rng.uniform(max(0.3, margin[0]), min(0.7, 1 - margin[0])), rng.uniform(0.3, 0.7))
        start = end = centre
    return Scene(
        caption=caption,
        start=start,
        end=end,
        size=size,
        period=rng.uniform(0.12, 0.24),
        stripe_angle=float(rng.choice([0.0, 0.25, 0.5, 0.75])) * math.pi,
        phase=(rng.uniform(), rng.uniform()),
    )


# --------------------------------------------------------------------------------------------------
# Rendering: a whole batch at once on any device, with one host-to-device copy of the scene numbers
# and a few dozen kernels per shape present, so a GPU draws its own training data.


def _scene_numbers(scene: Scene) -> list[float]:
    """Start, end, sizes, hue and hue change of the object, then the background's numbers."""
    c = scene.caption
    turn = 0.0 if c.target is None else (COLOURS[c.target] - COLOURS[c.colour] + 180.0) % 360.0 - 180.0  # shortest arc
    return [
        *scene.start,
        *scene.end,
        *scene.size,
        COLOURS[c.colour],
        turn,
        *background_numbers(c.pattern, c.background, scene.period, scene.stripe_angle, scene.phase),
    ]


def render_scenes(
    scenes: Sequence[Scene], num_frames: int, height: int, width: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Render ``(B, F, H, W, 3)`` float32 frames in [0, 1] on ``device``."""
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not scenes:
        raise ValueError("scenes must not be empty")
    device = torch.device(device)
    order = sorted(range(len(scenes)), key=lambda i: SHAPES.index(scenes[i].caption.shape))  # shapes contiguous
    numbers = host_to_device(torch.from_numpy(np.array([_scene_numbers(scenes[i]) for i in order], np.float32)), device)
    t = torch.linspace(0.0, 1.0, num_frames, device=device) if num_frames > 1 else torch.zeros(1, device=device)

    def along(first: int) -> torch.Tensor:
        """``(B, F)``: column ``first`` interpolated to column ``first + 2`` over the frames."""
        start, end = numbers[:, first, None], numbers[:, first + 2, None]
        return start + (end - start) * t

    cx, cy = along(0) * width, along(1) * height
    radius = (numbers[:, 4, None] + (numbers[:, 5, None] - numbers[:, 4, None]) * t) * min(height, width)
    colour = hue_to_rgb((numbers[:, 6, None] + numbers[:, 7, None] * t) % 360.0)
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    covers, first = [], 0
    for shape, members in itertools.groupby(scenes[i].caption.shape for i in order):
        group = slice(first, first + len(list(members)))
        first = group.stop
        r = radius[group, :, None, None]
        x = (xs - cx[group, :, None, None]) / r
        y = (ys[:, None] - cy[group, :, None, None]) / r
        covers.append(coverage(shape_distance(shape, x, y) * r))
    cover = torch.cat(covers)[..., None]
    frames = torch.lerp(draw_backgrounds(numbers[:, 8:], height, width)[:, None], colour[:, :, None, None, :], cover)
    if order == list(range(len(scenes))):
        return frames
    rank = {index: r for r, index in enumerate(order)}
    return torch.stack([frames[rank[i]] for i in range(len(scenes))])  # back to the order given


def render_video(
    caption: Caption | str, seed: int, num_frames: int = 33, height: int = 192, width: int = 192
) -> np.ndarray:
    """``(F, H, W, 3)`` uint8 video of a caption (a :class:`Caption` or its text); same inputs, same pixels."""
    caption = parse_caption(caption) if isinstance(caption, str) else caption
    frames = render_scenes([make_scene(caption, seed, width / height)], num_frames, height, width)[0]
    return (frames * 255.0).round().to(torch.uint8).numpy()


def render_batch(
    captions: Sequence[Caption], seeds: Sequence[int], num_frames: int, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """A VAE-ready batch ``(B, 3, F, H, W)`` in [-1, 1], rendered on ``device``."""
    scenes = [make_scene(c, int(s), width / height) for c, s in zip(captions, seeds, strict=True)]
    return render_scenes(scenes, num_frames, height, width, device).permute(0, 4, 1, 2, 3).mul(2.0).sub(1.0)


# --------------------------------------------------------------------------------------------------
# Reading a video back (numpy; works on rendered and generated videos alike).


@dataclass(frozen=True)
class Reading:
    """What the reader sees: the object's hue, area and centroid in its first and last visible frames.

    Centroids are relative to the frame (x / width, y / height); areas are fractions of the frame.
    ``visible`` is the fraction of frames in which the object was found.
    """

    first_hue: float
    last_hue: float
    first_centroid: tuple[float, float]
    last_centroid: tuple[float, float]
    first_area: float
    last_area: float
    visible: float


def read_video(frames: np.ndarray) -> Reading | None:
    """Find the saturated object in each frame; None when it is in no frame."""
    if np.ndim(frames) != 4 or np.shape(frames)[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got shape {np.shape(frames)}")
    hue, mask = object_pixels(as_unit_float(frames))
    height, width = mask.shape[1:]
    # A frame counts when the object covers at least a 6x6-pixel-equivalent of a 128x128 frame.
    seen = np.flatnonzero(mask.sum(axis=(1, 2)) >= max(4, mask[0].size * 0.002))
    if seen.size == 0:
        return None
    ys, xs = np.mgrid[0:height, 0:width]

    def at(i: int) -> tuple[float, tuple[float, float], float]:
        m = mask[i]
        centroid = (float((xs[m] + 0.5).mean() / width), float((ys[m] + 0.5).mean() / height))
        return mean_hue(hue[i][m]), centroid, float(m.mean())

    (h0, c0, a0), (h1, c1, a1) = at(int(seen[0])), at(int(seen[-1]))
    return Reading(h0, h1, c0, c1, a0, a1, seen.size / mask.shape[0])


def read_motion(reading: Reading) -> str:
    """The motion word that best explains a reading, or ``still``."""
    if hue_distance(reading.first_hue, reading.last_hue) >= MIN_TURN_DEGREES / 2:
        return "turning"
    growth = reading.last_area / max(reading.first_area, 1e-9)
    if growth >= 1.6:
        return "growing"
    if growth <= 1 / 1.6:
        return "shrinking"
    dx = reading.last_centroid[0] - reading.first_centroid[0]
    dy = reading.last_centroid[1] - reading.first_centroid[1]
    if max(abs(dx), abs(dy)) < 0.12:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def check_video(caption: Caption | str, frames: np.ndarray) -> dict[str, bool]:
    """Does a video show its caption? ``{"colour": ..., "motion": ...}`` from :func:`read_video`.

    ``colour`` checks the first visible frame (and the last one against ``target`` for ``turning``).
    """
    caption = parse_caption(caption) if isinstance(caption, str) else caption
    reading = read_video(frames)
    if reading is None:
        return {"colour": False, "motion": False}
    colour = nearest_colour(reading.first_hue) == caption.colour
    if caption.target is not None:
        colour = colour and nearest_colour(reading.last_hue) == caption.target
    return {"colour": colour, "motion": read_motion(reading) == caption.motion}
