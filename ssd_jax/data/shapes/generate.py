"""The generator of the synthetic shapes: coloured shapes on textured backgrounds, exact boxes.

Geometry: an image spans the continuous rectangle [0, W] x [0, H]; pixel (i, j) covers
[j, j + 1) x [i, i + 1). Every shape is a polygon (a circle is a 64-gon with vertices on the
axes, so its extent is exactly the circle's), and its box is the extent of its vertices, so boxes
are exact by construction. Rasterisation is 4x supersampled, so the pixels a shape touches
reach each side of its box to within 1 px (tested).

Generation is deterministic per (split, index): example i of a split uses
``np.random.default_rng([SPLIT_SEEDS[split], i])``. numpy and Pillow only.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from ssd_jax.classes import SHAPES_CLASS_NAMES as CLASS_NAMES

NUM_TRAIN = 3000
NUM_TEST = 500
SPLIT_SEEDS = {'train': 1001, 'test': 2002}

IMAGE_SIZE_RANGE = (160, 320)     # height and width, each uniform, inclusive
MAX_SHAPES = 6                    # 1..MAX_SHAPES shapes per image
SIZE_RANGE = (0.08, 0.7)          # box's longer side / image's shorter side, log-uniform
MIN_VISIBLE = 0.5                 # a shape keeps at least this fraction of its pixels visible
PLACEMENT_TRIES = 8               # per shape, before it is skipped
BORDER_SNAP_PROB = 0.1            # per axis: push the shape against an image border
MIN_COLOUR_DISTANCE = 110.0       # RGB distance from the mean background under the shape
SUPERSAMPLE = 4                   # anti-aliasing factor of the rasteriser
JPEG_QUALITY = 95                 # of the stored images


class Composition(NamedTuple):
    """Everything `compose` drew; `generate_example` returns the first three fields."""

    image: np.ndarray        # uint8 [H, W, 3]
    boxes: np.ndarray        # float32 [N, 4] (xmin, ymin, xmax, ymax) normalised
    labels: np.ndarray       # int64 [N] index into CLASS_NAMES
    background: np.ndarray   # uint8 [H, W, 3], the image before any shape was drawn
    polygons: list           # N float64 [K, 2] (x, y) vertices in pixels, in drawing order


# ---------------------------------------------------------------------------------------------
# Backgrounds. Built channel-first, float32 [3, H, W] in [0, 255], with in-place arithmetic:
# broadcasting over a trailing axis of 3 and fresh image-sized temporaries are what make numpy
# slow here, and generation speed is the point of a built-in data set.


def _random_colour(rng):
    return rng.uniform(0, 255, size=(3, 1, 1)).astype(np.float32)


def _coords(h, w):
    """Pixel-centre coordinates (y [H, 1], x [1, W])."""
    return np.arange(h, dtype=np.float32)[:, None] + 0.5, np.arange(w, dtype=np.float32)[None, :] + 0.5


def _mix(c0, c1, t):
    """Per-pixel blend of two colours [3, 1, 1] by t [H, W] in [0, 1] -> [3, H, W]."""
    out = t * (c1 - c0)
    out += c0
    return out


def _gradient(rng, h, w):
    """Linear or radial blend between two random colours."""
    y, x = _coords(h, w)
    if rng.random() < 0.7:
        angle = rng.uniform(0, 2 * np.pi)
        t = x * np.float32(np.cos(angle)) + y * np.float32(np.sin(angle))
    else:
        t = np.hypot(y - np.float32(rng.uniform(0, h)), x - np.float32(rng.uniform(0, w)))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _mix(_random_colour(rng), _random_colour(rng), t)


def _noise(rng, h, w):
    """Cloudy low-frequency noise (a small random grid, bicubically upsampled) around a colour."""
    cells = int(rng.integers(3, 24))
    grid = rng.normal(0.0, rng.uniform(15, 50), size=(3, cells, cells)).astype(np.float32)
    image = np.stack([np.asarray(Image.fromarray(g).resize((w, h), Image.BICUBIC)) for g in grid])
    image += _random_colour(rng)
    return image


def _stripes(rng, h, w):
    """Stripes or a checker board of two colours, random period and angle, soft or hard edges."""
    y, x = _coords(h, w)
    angle, frequency = rng.uniform(0, np.pi), np.float32(2 * np.pi / rng.uniform(6, 48))
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    wave = np.sin((x * cos + y * sin) * frequency)
    if rng.random() < 0.4:  # checker: product of two orthogonal waves
        wave *= np.sin((y * cos - x * sin) * frequency)
    sharpness = np.float32(rng.choice([1.0, 8.0]))  # 1: smooth sinusoid; 8: nearly square wave
    t = 0.5 + 0.5 * np.tanh(sharpness * wave) / np.tanh(sharpness)
    return _mix(_random_colour(rng), _random_colour(rng), t)


def _blend_into(image, other, alpha):
    """image += alpha * (other - image), in place; alpha a scalar or [H, W]. Consumes `other`."""
    other -= image
    other *= alpha
    image += other


def _blobs(rng, h, w):
    """A flat colour with 3-9 soft Gaussian blobs of other colours laid over it."""
    y, x = _coords(h, w)
    image = np.broadcast_to(_random_colour(rng), (3, h, w)).copy()
    for _ in range(int(rng.integers(3, 10))):
        cy, cx = np.float32(rng.uniform(0, h)), np.float32(rng.uniform(0, w))
        sigma = np.float32(rng.uniform(0.05, 0.3) * min(h, w))
        alpha = np.float32(rng.uniform(0.5, 1.0)) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
        _blend_into(image, np.broadcast_to(_random_colour(rng), (3, h, w)).copy(), alpha)
    return image


_BACKGROUNDS = (_gradient, _noise, _stripes, _blobs)


def make_background(rng, height, width):
    """One of the background kinds, sometimes blended with a second, plus pixel noise.

    Returns float32 [height, width, 3] in [0, 255].
    """
    first, second = rng.choice(len(_BACKGROUNDS), size=2, replace=False)
    image = _BACKGROUNDS[first](rng, height, width)
    if rng.random() < 0.4:
        _blend_into(image, _BACKGROUNDS[second](rng, height, width), np.float32(rng.uniform(0.25, 0.6)))
    noise = rng.random(image.shape, dtype=np.float32)  # uniform pixel noise, amplitude 0..12
    noise -= 0.5
    noise *= np.float32(rng.uniform(0, 24))
    image += noise
    np.clip(image, 0, 255, out=image)
    return np.ascontiguousarray(image.transpose(1, 2, 0))


# ---------------------------------------------------------------------------------------------
# Shapes: polygons in pixel coordinates.


def _regular(n):
    """Unit-radius regular n-gon vertices [n, 2], the first at angle 0."""
    angles = 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def unit_polygon(label, rng):
    """Vertices [K, 2] of class `label` around the origin, randomly rotated (circles are not)."""
    name = CLASS_NAMES[label]
    if name == 'circle':
        return _regular(64)  # vertices at 0, 90, 180, 270 degrees: extent is the circle's
    if name == 'star':
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        vertices = _regular(10) * radii[:, None]
    else:
        vertices = _regular({'square': 4, 'triangle': 3, 'hexagon': 6}[name])
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return vertices @ rotation.T


def polygon_box(polygon):
    """Vertices [K, 2] (x, y) -> tight box (xmin, ymin, xmax, ymax) [4], same units."""
    return np.concatenate([polygon.min(axis=0), polygon.max(axis=0)])


def _place(rng, unit, height, width):
    """Scale `unit` to a random size and move it to a random spot with its box inside the image."""
    lo, hi = polygon_box(unit).reshape(2, 2)
    size = np.exp(rng.uniform(*np.log(SIZE_RANGE))) * min(height, width)
    polygon = unit * (size / (hi - lo).max())
    lo, hi = polygon_box(polygon).reshape(2, 2)
    offset = np.empty(2)
    for axis, limit in enumerate((width, height)):
        low, high = -lo[axis], limit - hi[axis]  # the offsets that keep the box inside
        offset[axis] = rng.choice([low, high]) if rng.random() < BORDER_SNAP_PROB else rng.uniform(low, high)
    return polygon + offset


# ---------------------------------------------------------------------------------------------
# Rasterising and compositing.


def rasterise(polygon, height, width):
    """Anti-aliased coverage of a polygon (pixels [K, 2] (x, y)) on an image of height x width.

    Returns (coverage float32 [h, w] in [0, 1], (y0, x0)): the pixels the polygon's box touches
    and the top-left one. Coverage is the fraction of the SUPERSAMPLE^2 sub-pixels Pillow fills.
    """
    s = SUPERSAMPLE
    lo, hi = polygon_box(polygon).reshape(2, 2)
    x0, y0 = np.maximum(np.floor(lo).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(hi).astype(int), [width, height])
    mask = Image.new('L', (int(x1 - x0) * s, int(y1 - y0) * s), 0)
    # Pillow puts fine pixel k's centre at coordinate k; fine pixel k covers [k/s, (k+1)/s).
    fine = (polygon - [x0, y0]) * s - 0.5
    ImageDraw.Draw(mask).polygon([tuple(p) for p in fine], fill=255)
    coverage = np.asarray(mask.reduce(s), dtype=np.float32) / 255.0  # exact s x s box average
    return coverage, (int(y0), int(x0))


def _full(coverage, offset, height, width):
    """Patch coverage -> bool [height, width] of the pixels at least half covered."""
    full = np.zeros((height, width), dtype=bool)
    y0, x0 = offset
    full[y0:y0 + coverage.shape[0], x0:x0 + coverage.shape[1]] = coverage >= 0.5
    return full


def _contrasting_colour(rng, canvas, coverage, offset):
    """A random colour far (RGB distance) from the mean of the canvas under the shape."""
    y0, x0 = offset
    patch = canvas[y0:y0 + coverage.shape[0], x0:x0 + coverage.shape[1]]
    mean = (patch * coverage[..., None]).sum(axis=(0, 1)) / max(float(coverage.sum()), 1e-6)
    candidates = rng.uniform(0, 255, size=(32, 3)).astype(np.float32)
    distance = np.linalg.norm(candidates - mean, axis=-1)
    far = np.flatnonzero(distance >= MIN_COLOUR_DISTANCE)
    return candidates[rng.choice(far) if far.size else np.argmax(distance)]


def _paint(canvas, coverage, offset, colour):
    """Alpha-blend `colour` into `canvas` (float32 [H, W, 3], in place) with `coverage` as alpha."""
    y0, x0 = offset
    patch = canvas[y0:y0 + coverage.shape[0], x0:x0 + coverage.shape[1]]
    patch += coverage[..., None] * (colour - patch)


def _occludes(candidate, visible, areas):
    """Whether drawing `candidate` (bool [H, W]) would hide more than MIN_VISIBLE of any shape."""
    uncovered = ~candidate
    return any(np.count_nonzero(v & uncovered) < MIN_VISIBLE * a for v, a in zip(visible, areas))


def compose(rng, height=None, width=None):
    """Draws one example and returns a `Composition` (also the background and the polygons)."""
    if height is None:
        height = int(rng.integers(IMAGE_SIZE_RANGE[0], IMAGE_SIZE_RANGE[1] + 1))
    if width is None:
        width = int(rng.integers(IMAGE_SIZE_RANGE[0], IMAGE_SIZE_RANGE[1] + 1))
    canvas = make_background(rng, height, width)
    background = np.round(canvas).astype(np.uint8)
    polygons, labels, visible, areas = [], [], [], []
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        label = int(rng.integers(len(CLASS_NAMES)))
        for _ in range(PLACEMENT_TRIES):
            polygon = _place(rng, unit_polygon(label, rng), height, width)
            coverage, offset = rasterise(polygon, height, width)
            pixels = _full(coverage, offset, height, width)
            if not _occludes(pixels, visible, areas):
                break
        else:
            continue  # no room for this shape: skip it
        _paint(canvas, coverage, offset, _contrasting_colour(rng, canvas, coverage, offset))
        visible = [v & ~pixels for v in visible] + [pixels]
        areas.append(np.count_nonzero(pixels))
        polygons.append(polygon)
        labels.append(label)
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes = np.stack([polygon_box(p) for p in polygons]) / scale
    return Composition(
        image=np.round(canvas).astype(np.uint8),
        boxes=np.clip(boxes, 0.0, 1.0).astype(np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        background=background,
        polygons=polygons,
    )


def generate_example(rng, height=None, width=None):
    """One synthetic sample, no TFDS needed.

    Args:
      rng: a `np.random.Generator`; the sample is a deterministic function of its state.
      height, width: image size in pixels; each defaults to uniform in IMAGE_SIZE_RANGE.

    Returns:
      image uint8 [H, W, 3] RGB, boxes float32 [N, 4] (xmin, ymin, xmax, ymax) normalised,
      labels int64 [N] in 0..len(CLASS_NAMES)-1, with 1 <= N <= MAX_SHAPES.
    """
    composition = compose(rng, height, width)
    return composition.image, composition.boxes, composition.labels


def encode_jpeg(image, quality=JPEG_QUALITY):
    """uint8 [H, W, 3] -> JPEG bytes as the builder stores them (no chroma subsampling, which
    would smear the colour edges the boxes are tight to)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='JPEG', quality=quality, subsampling=0)
    return buffer.getvalue()


def example_rng(split, index):
    """The generator that draws example `index` of `split`."""
    return np.random.default_rng([SPLIT_SEEDS[split], index])
