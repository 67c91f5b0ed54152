"""Procedural text-image data for the tiny FLUX model: caption grammar, layouts, renderer with masks.

One to three objects on a patterned background, described by a caption from a small grammar::

    a red star on a plain gray background
    a big red star left of a small blue ring on a striped gray background
    an orange circle above a green square right of a big pink diamond on a dotted black background

Each object has a colour, a shape and a size (``small``, unnamed medium, ``big``); a relation says
where an object is relative to the next one (``left of``, ``right of``, ``above``, ``below``), so three
objects form a chain. The objects of one caption have different colours, and the background none of
them. Colours, shapes and background patterns are the tiny Wan model's
(:mod:`tools.tiny_common.drawing`): saturated bright objects, muted backgrounds.

``(caption, seed)`` renders deterministically: the seed draws the exact sizes, the layout and the
background pattern's scale, angle and phase; the caption fixes what is drawn. Objects never overlap,
so each object's ground-truth mask is its own coverage. Positions are the centroids of the objects'
ink, which is what a reader measures (:mod:`tools.tiny_flux.reader`). Rendering is batched torch, so
training batches are drawn on the GPU.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from tools.tiny_common.drawing import (
    BACKGROUND_COLOURS,
    COLOURS,
    GREYS,
    PATTERNS,
    SHAPES,
    article,
    background_numbers,
    choose,
    coverage,
    draw_backgrounds,
    host_to_device,
    hue_to_rgb,
    shape_distance,
)

MAX_OBJECTS = 3
# Size classes: the range of a shape's unit (see ``shape_distance``) relative to the shorter side.
# Three big objects in a row must fit: 6 reaches + 2 gaps <= 1 (reach at most 1.39 units).
SIZES: dict[str, tuple[float, float]] = {"small": (0.055, 0.065), "medium": (0.075, 0.087), "big": (0.1, 0.113)}
SIZE_WORDS: tuple[str, ...] = ("small", "big")  # medium is the unnamed default
# Relation of an object to the next one: the direction (x right, y down) from the next one to it.
RELATIONS: dict[str, tuple[float, float]] = {
    "left of": (-1.0, 0.0),
    "right of": (1.0, 0.0),
    "above": (0.0, -1.0),
    "below": (0.0, 1.0),
}
# Layout: free space between two objects' reaches, and how far off its axis a relation may lean
# (at most this fraction of the distance along it, so the relation reads unambiguously).
GAP = 0.03
LEAN = 0.4
COUNT_ODDS = (0.3, 0.4, 0.3)  # of one, two, three objects in sampled captions


@dataclass(frozen=True)
class Thing:
    """One object of a caption: colour word, shape word, size class."""

    colour: str
    shape: str
    size: str = "medium"

    def __post_init__(self) -> None:
        choose("colour", self.colour, tuple(COLOURS))
        choose("shape", self.shape, SHAPES)
        choose("size", self.size, tuple(SIZES))

    @property
    def text(self) -> str:
        words = [self.size] if self.size in SIZE_WORDS else []
        words += [self.colour, self.shape]
        return f"{article(words[0])} {' '.join(words)}"


@dataclass(frozen=True)
class Caption:
    """What one image shows: ``things[i]`` is ``relations[i]`` ``things[i + 1]``."""

    things: tuple[Thing, ...]
    relations: tuple[str, ...]
    pattern: str
    background: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.things) <= MAX_OBJECTS:
            raise ValueError(f"a caption names 1 to {MAX_OBJECTS} objects, got {len(self.things)}")
        if len(self.relations) != len(self.things) - 1:
            raise ValueError(f"{len(self.things)} objects need {len(self.things) - 1} relations, got {self.relations}")
        for relation in self.relations:
            choose("relation", relation, tuple(RELATIONS))
        colours = [t.colour for t in self.things]
        if len(set(colours)) != len(colours):
            raise ValueError(f"the objects of a caption must have different colours, got {colours}")
        choose("pattern", self.pattern, PATTERNS)
        choose("background", self.background, BACKGROUND_COLOURS)

    @property
    def text(self) -> str:
        words = [self.things[0].text]
        for relation, thing in zip(self.relations, self.things[1:], strict=True):
            words += [relation, thing.text]
        return f"{' '.join(words)} on a {self.pattern} {self.background} background"

    def __str__(self) -> str:
        return self.text


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order (the tokenizer's vocabulary)."""
    relation_words = [w for r in RELATIONS for w in r.split()]
    words = ["a", "an", "on", "background", *relation_words, *SIZE_WORDS, *COLOURS, *GREYS, *SHAPES, *PATTERNS]
    return list(dict.fromkeys(words))


def _parse_thing(words: list[str], at: int, text: str) -> tuple[Thing, int]:
    """The object phrase starting at ``words[at]`` and the index after it."""
    if words[at : at + 1] not in (["a"], ["an"]):
        raise ValueError(f"an object must start with 'a' or 'an' at word {at + 1}; got {text!r}")
    at += 1
    size = "medium"
    if words[at : at + 1] and words[at] in SIZE_WORDS:
        size, at = words[at], at + 1
    if len(words) < at + 2:
        raise ValueError(f"an object reads 'a|an [small|big] <colour> <shape>'; got {text!r}")
    return Thing(words[at], words[at + 1], size), at + 2


def parse_caption(text: str) -> Caption:
    """The :class:`Caption` of a grammar sentence (case and extra spaces ignored); ``ValueError`` otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}")
    words = text.lower().split()
    form = "'<object> [<relation> <object> ...] on a <pattern> <background> background'"
    if len(words) < 8 or words[-5:-3] != ["on", "a"] or words[-1] != "background":
        raise ValueError(f"caption must read {form}; got {text!r}")
    body, things, relations, at = words[:-5], [], [], 0
    while True:
        thing, at = _parse_thing(body, at, text)
        things.append(thing)
        if at == len(body):
            break
        relation = next((r for r in RELATIONS if body[at : at + len(r.split())] == r.split()), None)
        if relation is None:
            raise ValueError(f"relation must be one of {', '.join(RELATIONS)} at word {at + 1}; got {text!r}")
        relations.append(relation)
        at += len(relation.split())
    return Caption(tuple(things), tuple(relations), words[-3], words[-2])


def sample_caption(rng: np.random.Generator, count: int | None = None) -> Caption:
    """A random caption of ``count`` objects (1-3 by :data:`COUNT_ODDS` when None): different colours,
    a background of none of them."""
    count = int(rng.choice(len(COUNT_ODDS), p=COUNT_ODDS)) + 1 if count is None else count
    colours = [str(c) for c in rng.choice(list(COLOURS), size=count, replace=False)]
    things = tuple(Thing(c, str(rng.choice(SHAPES)), str(rng.choice(list(SIZES)))) for c in colours)
    relations = tuple(str(r) for r in rng.choice(list(RELATIONS), size=count - 1))
    backgrounds = [b for b in BACKGROUND_COLOURS if b not in colours]
    return Caption(things, relations, str(rng.choice(PATTERNS)), str(rng.choice(backgrounds)))


# --------------------------------------------------------------------------------------------------
# Shapes: measured once on a fine grid, so layouts and the reader use centroids and true reaches.


@dataclass(frozen=True)
class ShapeStats:
    """A unit-size shape's ink centroid (relative to its distance function's origin), its area with
    holes filled (a ring's too) and the farthest ink from the centroid, in units."""

    centroid: tuple[float, float]
    filled_area: float
    reach: float


@functools.cache
def shape_stats(shape: str) -> ShapeStats:
    """Measured on a 401x401 grid over [-1.6, 1.6]^2 (the reach rounded up by a pixel's diagonal)."""
    extent, n = 1.6, 401
    axis = torch.linspace(-extent, extent, n, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    ink = shape_distance(shape, x, y) < 0
    pixel = (2 * extent / (n - 1)) ** 2
    cx, cy = float(x[ink].mean()), float(y[ink].mean())
    reach = float(torch.hypot(x[ink] - cx, y[ink] - cy).max()) + math.sqrt(2) * 2 * extent / (n - 1)
    filled = ink | (torch.hypot(x, y) < 1.0) if shape == "ring" else ink
    return ShapeStats((cx, cy), float(filled.sum()) * pixel, reach)


# --------------------------------------------------------------------------------------------------
# Scene: the seed's choices. Positions are relative to the frame (x / width, y / height), sizes
# relative to the shorter side, so one scene renders at any resolution.


@dataclass(frozen=True)
class Scene:
    caption: Caption
    positions: tuple[tuple[float, float], ...]
    sizes: tuple[float, ...]
    period: float
    stripe_angle: float
    phase: tuple[float, float]


def _layouts(caption: Caption, sizes: np.ndarray, room: np.ndarray, rng: np.random.Generator, tries: int) -> np.ndarray:
    """``tries`` candidate layouts ``(tries, N, 2)`` of centroids in units of the shorter side, inside
    ``room`` (width, height in those units) and NaN where a candidate breaks a constraint.

    Each next object is placed from the previous one against its relation's direction, at a distance
    of at least the two reaches plus :data:`GAP` (up to 0.3 more), leaning at most :data:`LEAN` off
    the axis; the whole layout is then moved to a random place where it fits.
    """
    count = len(caption.things)
    reach = sizes * np.array([shape_stats(t.shape).reach for t in caption.things])
    points = np.zeros((tries, count, 2))
    for i, relation in enumerate(caption.relations):
        direction = np.array(RELATIONS[relation])
        distance = reach[i] + reach[i + 1] + GAP + rng.uniform(0.0, 0.3, tries)
        lean = rng.uniform(-LEAN, LEAN, tries) * distance
        points[:, i + 1] = points[:, i] - direction * distance[:, None] + direction[::-1] * lean[:, None]
    low = (points - reach[None, :, None]).min(axis=1)
    high = (points + reach[None, :, None]).max(axis=1)
    slack = room - (high - low)
    shift = -low + rng.uniform(0.0, 1.0, (tries, 2)) * np.clip(slack, 0.0, None)
    points = points + shift[:, None, :]
    ok = (slack >= 0).all(axis=1)
    for i, j in itertools.combinations(range(count), 2):  # every pair apart (neighbours are by construction)
        ok &= np.hypot(*(points[:, i] - points[:, j]).T) >= reach[i] + reach[j] + GAP
    points[~ok] = np.nan
    return points


def make_scene(caption: Caption, seed: int, aspect: float = 1.0) -> Scene:
    """Draw the seed's choices for ``caption``; ``aspect`` is width / height of the image to come."""
    rng = np.random.default_rng(seed)
    sizes = np.array([rng.uniform(*SIZES[t.size]) for t in caption.things])
    room = np.array([max(1.0, aspect), max(1.0, 1.0 / aspect)])  # frame size in units of the shorter side
    for _ in range(16):
        candidates = _layouts(caption, sizes, room, rng, 128)
        valid = np.flatnonzero(~np.isnan(candidates[:, 0, 0]))
        if valid.size:
            break
    else:
        raise ValueError(f"no layout found for {caption.text!r} at aspect {aspect}")
    points = candidates[valid[0]] / room
    return Scene(
        caption=caption,
        positions=tuple((float(x), float(y)) for x, y in points),
        sizes=tuple(float(s) for s in sizes),
        period=rng.uniform(0.12, 0.24),
        stripe_angle=float(rng.choice([0.0, 0.25, 0.5, 0.75])) * math.pi,
        phase=(rng.uniform(), rng.uniform()),
    )


# --------------------------------------------------------------------------------------------------
# Rendering: a whole batch at once on any device, two host-to-device copies of numbers and a few
# kernels per shape present.


class SceneRows(NamedTuple):
    """The numbers a batch of scenes renders from, made on the host (in data-loader workers when
    training) and drawn on the device by :func:`draw_rows`.

    ``objects`` ``(M, 5)``: per object its slot (scene * MAX_OBJECTS + index in the caption), the
    origin of its shape's distance function (x, y in pixels), its unit in pixels and its hue, sorted
    by shape; ``shape_counts`` how many objects of each of :data:`SHAPES` in that order;
    ``backgrounds`` ``(B, BACKGROUND_COLUMNS)``.
    """

    objects: torch.Tensor
    shape_counts: torch.Tensor
    backgrounds: torch.Tensor


def scene_rows(scenes: Sequence[Scene], height: int, width: int) -> SceneRows:
    """The :class:`SceneRows` of ``scenes`` drawn at ``height`` x ``width``."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not scenes:
        raise ValueError("scenes must not be empty")
    short = min(height, width)
    rows = []
    for b, scene in enumerate(scenes):
        for i, (thing, (x, y), size) in enumerate(zip(scene.caption.things, scene.positions, scene.sizes, strict=True)):
            offset = shape_stats(thing.shape).centroid
            origin = (x * width - offset[0] * size * short, y * height - offset[1] * size * short)
            rows.append((SHAPES.index(thing.shape), b * MAX_OBJECTS + i, *origin, size * short, COLOURS[thing.colour]))
    rows.sort(key=lambda r: r[0])
    backgrounds = [
        background_numbers(s.caption.pattern, s.caption.background, s.period, s.stripe_angle, s.phase) for s in scenes
    ]
    return SceneRows(
        objects=torch.tensor([r[1:] for r in rows], dtype=torch.float32),
        shape_counts=torch.bincount(torch.tensor([r[0] for r in rows]), minlength=len(SHAPES)),
        backgrounds=torch.tensor(backgrounds, dtype=torch.float32),
    )


def draw_rows(
    rows: SceneRows, height: int, width: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, H, W, 3)`` float32 in [0, 1] and masks ``(B, MAX_OBJECTS, H, W)``: each object's
    visible coverage in [0, 1], in caption order (zeros for absent objects)."""
    device = torch.device(device)
    objects = host_to_device(rows.objects, device)
    numbers = host_to_device(rows.backgrounds, device)
    slots = len(numbers) * MAX_OBJECTS
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    covers = []
    for shape, group in zip(SHAPES, objects.split(rows.shape_counts.tolist()), strict=True):
        if len(group):
            r = group[:, 3, None, None]
            x = (xs - group[:, 1, None, None]) / r
            y = (ys[:, None] - group[:, 2, None, None]) / r
            covers.append(coverage(shape_distance(shape, x, y) * r))
    index = objects[:, 0].long()
    cover = torch.zeros(slots, height, width, device=device).index_copy_(0, index, torch.cat(covers))
    colour = torch.zeros(slots, 3, device=device).index_copy_(0, index, hue_to_rgb(objects[:, 4]))
    cover = cover.view(-1, MAX_OBJECTS, height, width)
    colour = colour.view(-1, MAX_OBJECTS, 3)

    images = draw_backgrounds(numbers, height, width)
    masks = []
    for k in range(MAX_OBJECTS):  # later objects are drawn over earlier ones (they never overlap, though)
        images = torch.lerp(images, colour[:, k, None, None, :], cover[:, k, :, :, None])
        masks.append(cover[:, k] * torch.prod(1.0 - cover[:, k + 1 :], dim=1))
    return images, torch.stack(masks, dim=1)


def render_scenes(
    scenes: Sequence[Scene], height: int, width: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`draw_rows` of :func:`scene_rows`: images and masks of ``scenes`` on ``device``."""
    return draw_rows(scene_rows(scenes, height, width), height, width, device)


def render_image(
    caption: Caption | str, seed: int, height: int = 128, width: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, 3)`` uint8 image of a caption (a :class:`Caption` or its text) and its objects' masks
    ``(N, H, W)`` bool (coverage of at least half a pixel), in caption order; same inputs, same pixels."""
    caption = parse_caption(caption) if isinstance(caption, str) else caption
    images, masks = render_scenes([make_scene(caption, seed, width / height)], height, width)
    image = (images[0] * 255.0).round().to(torch.uint8).numpy()
    return image, (masks[0, : len(caption.things)] >= 0.5).numpy()


def render_batch(
    captions: Sequence[Caption], seeds: Sequence[int], height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A VAE-ready batch ``(B, 3, H, W)`` in [-1, 1] rendered on ``device``, and the masks of
    :func:`render_scenes`."""
    scenes = [make_scene(c, int(s), width / height) for c, s in zip(captions, seeds, strict=True)]
    images, masks = render_scenes(scenes, height, width, device)
    return images.permute(0, 3, 1, 2).mul(2.0).sub(1.0), masks
