"""The built-in synthetic detection data set "shapes": coloured shapes on textured backgrounds.

Two views of the same generator:

* ``generate_example(rng)`` draws one sample with numpy + Pillow, no TFDS involved.
* ``Shapes`` is a TFDS builder (name ``shapes``, configs ``full`` (default, 3000/500 images) and
  ``tiny`` (16/8)) whose features mirror TFDS ``voc``, so one decode function serves both.
  It prepares fully offline in seconds; ``prepare()`` does that and reports the time. Images
  are stored as JPEG (quality 95, no chroma subsampling) like VOC's: PNG of these textures is 5x
  bigger and 10x slower to write.

Geometry: an image spans the continuous rectangle [0, W] x [0, H]; pixel (i, j) covers
[j, j + 1) x [i, i + 1). Every shape is a polygon (a circle is a 64-gon with vertices on the
axes, so its extent is exactly the circle's), and its box is the extent of its vertices, so boxes
are exact by construction. Rasterisation is 4x supersampled, so the pixels a shape touches
reach each side of its box to within 1 px (tested).

Generation is deterministic per (split, index): example i of a split uses
``np.random.default_rng([SPLIT_SEEDS[split], i])``.

The same generator also writes the data set as files in the layouts users' own data comes in:
``write_voc_folder`` (a VOC folder) and ``write_coco_json`` (COCO instances files and image
folders), with this data set's class names and, in the json, non-contiguous category ids, to test
and measure the readers of such folders.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import numbers
import os
import shutil
import time
import xml.etree.ElementTree as ElementTree
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from ssd_jax import files
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


# ---------------------------------------------------------------------------------------------
# TFDS builder.


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Split sizes of the shapes data set."""

    num_train: int = NUM_TRAIN
    num_test: int = NUM_TEST


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic detection data: 1-6 coloured circles, squares, triangles, stars and hexagons on
    textured backgrounds, exact boxes, in the feature layout of TFDS `voc`."""

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release: 5 classes, 160-320 px images, exact boxes.',
                     '1.1.0': 'The same examples in ArrayRecord files (random access for the global order).'}
    # TFDS finds a builder's code by importlib_resources, which this environment lacks (etils'
    # optional extra); the path is only needed for checksums and metadata files, so say it here.
    code_path = tfds.core.Path(__file__)
    BUILDER_CONFIGS = [
        ShapesConfig(name='full', description=f'{NUM_TRAIN} train and {NUM_TEST} test images.'),
        ShapesConfig(name='tiny', description='16 train and 8 test images, for tests.', num_train=16, num_test=8),
    ]

    def _info(self):
        # DatasetInfo directly rather than dataset_info_from_configs, which would take any
        # README.md that appears next to this module as the description.
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
                'image/filename': tfds.features.Text(),
                'image/id': tf.int64,
                'objects': tfds.features.Sequence({
                    'bbox': tfds.features.BBoxFeature(),
                    'label': tfds.features.ClassLabel(names=CLASS_NAMES),
                    'is_difficult': tf.bool,
                }),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {
            'train': self._generate_examples('train', self.builder_config.num_train),
            'test': self._generate_examples('test', self.builder_config.num_test),
        }

    def _generate_examples(self, split, num_examples):
        for index in range(num_examples):
            image, boxes, labels = generate_example(example_rng(split, index))
            yield index, {
                'image': encode_jpeg(image),
                'image/filename': f'{split}_{index:06d}.jpg',
                'image/id': index,
                'objects': {
                    'bbox': boxes[:, [1, 0, 3, 2]],  # TFDS wants (ymin, xmin, ymax, xmax)
                    'label': labels,
                    'is_difficult': np.zeros(len(labels), dtype=bool),
                },
            }


def prepare(data_dir=None, config='full'):
    """Generates the data set offline (if not already there) and returns its builder.

    Args:
      data_dir: TFDS data directory; None means TFDS's default (~/tensorflow_datasets).
      config: 'full' or 'tiny'.
    """
    builder = Shapes(config=config, data_dir=data_dir)
    start = time.perf_counter()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f'shapes/{config}: {splits} ready in {builder.data_dir} after {time.perf_counter() - start:.1f} s')
    return builder


# ---------------------------------------------------------------------------------------------
# The data set as files: a VOC folder and a COCO json, as users' own labelled data comes.
#
# Image k (1-based, named `file_stem(k)`) is drawn by `file_example_rng(seed, k)`, the same in
# both layouts, and so is the split, so a VOC folder and a COCO json of one seed hold the same
# images and boxes. Per-object flags come from a stream of their own, so changing their rate
# leaves the images alone.

FILE_CATEGORY_IDS = (3, 7, 11, 17, 42)
"""COCO category id of CLASS_NAMES[k] in `write_coco_json`: not 1..K, so that readers must map ids."""

DIFFICULT_FRACTION = 0.05  # of the objects of a VOC folder, marked <difficult>1</difficult>
CROWD_FRACTION = 0.03      # of the objects of a COCO json, marked iscrowd 1
COCO_DECIMALS = 2          # of COCO's float boxes and areas, as in COCO's own files
VOC_LAYOUT = ('Annotations', 'ImageSets', 'JPEGImages')
COCO_LAYOUT = ('annotations', 'train2017', 'val2017')
MARKER = 'ssd_jax_shapes.json'  # written last into a folder of shapes files: the writer's summary


class FileExample(NamedTuple):
    """One image of a folder, with its objects in pixels."""

    stem: str              # file name without extension, e.g. 'shape_000001'
    number: int            # k in 1..count, the image's COCO id
    image: np.ndarray      # uint8 [H, W, 3]
    boxes: np.ndarray      # float64 [N, 4] (x0, y0, x1, y1) continuous pixels, within [0, W] x [0, H]
    labels: np.ndarray     # int64 [N] index into CLASS_NAMES
    areas: np.ndarray      # float64 [N] polygon areas in pixels (occlusion ignored)
    flag_draws: np.ndarray  # float64 [N] uniform in [0, 1): an object is flagged when below the rate


def file_stem(number):
    """Image `number` (1-based) -> its file stem, 'shape_000001' for 1."""
    return f'shape_{number:06d}'


def file_example_rng(seed, number):
    """The generator that draws image `number` (1-based) of the folders written with `seed`."""
    return np.random.default_rng([seed, number])


def held_out_numbers(seed, count, test_fraction):
    """The image numbers (of 1..count) in the test split: round(count * test_fraction) of them,
    drawn at random for `seed`. Returns a sorted list of ints."""
    num_test = round(count * test_fraction)
    return sorted(int(k) + 1 for k in np.random.default_rng([seed, 0]).permutation(count)[:num_test])


def polygon_area(polygon):
    """Vertices [K, 2] (x, y) of a simple polygon -> its area (shoelace formula), same units squared."""
    x, y = polygon.T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def file_example(seed, number):
    """Draws image `number` (1-based) of the folders of `seed` -> `FileExample`."""
    composition = compose(file_example_rng(seed, number))
    height, width = composition.image.shape[:2]
    boxes = np.stack([polygon_box(p) for p in composition.polygons])
    return FileExample(
        stem=file_stem(number),
        number=number,
        image=composition.image,
        boxes=np.clip(boxes, 0.0, [width, height, width, height]),
        labels=composition.labels,
        areas=np.array([polygon_area(p) for p in composition.polygons]),
        flag_draws=np.random.default_rng([seed, number, 1]).random(len(boxes)),
    )


def voc_pixel_box(box, width, height):
    """Continuous pixel box (x0, y0, x1, y1) -> VOC's integer (xmin, ymin, xmax, ymax).

    VOC's corners are the 1-based, inclusive indices of the first and last pixel the box touches
    (pixel i covers [i, i + 1) in 0-based terms), clipped to the image. Readers take the box back as
    (xmin - 1, ymin - 1, xmax, ymax): each side moves outwards by less than 1 px.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    return (max(math.floor(x0) + 1, 1), max(math.floor(y0) + 1, 1),
            min(math.ceil(x1), width), min(math.ceil(y1), height))


def _text_element(parent, tag, text):
    element = ElementTree.SubElement(parent, tag)
    element.text = str(text)
    return element


def voc_annotation_xml(filename, width, height, names, pixel_boxes, difficult):
    """One VOC annotation file's text.

    Args:
      filename: the image's file name, e.g. 'shape_000001.jpg'.
      width, height: the image's size in pixels.
      names: [N] class names; pixel_boxes: [N] VOC integer boxes (`voc_pixel_box`); difficult: [N] bools.
    """
    annotation = ElementTree.Element('annotation')
    _text_element(annotation, 'folder', 'shapes')
    _text_element(annotation, 'filename', filename)
    _text_element(ElementTree.SubElement(annotation, 'source'), 'database', 'ssd_jax synthetic shapes')
    size = ElementTree.SubElement(annotation, 'size')
    for tag, value in (('width', width), ('height', height), ('depth', 3)):
        _text_element(size, tag, value)
    _text_element(annotation, 'segmented', 0)
    for name, box, hard in zip(names, pixel_boxes, difficult):
        obj = ElementTree.SubElement(annotation, 'object')
        _text_element(obj, 'name', name)
        _text_element(obj, 'pose', 'Unspecified')
        _text_element(obj, 'truncated', 0)  # every shape lies inside its image
        _text_element(obj, 'difficult', int(hard))
        bndbox = ElementTree.SubElement(obj, 'bndbox')
        for tag, value in zip(('xmin', 'ymin', 'xmax', 'ymax'), box):
            _text_element(bndbox, tag, value)
    ElementTree.indent(annotation, space='\t')  # VOC's own files are tab-indented
    return ElementTree.tostring(annotation, encoding='unicode') + '\n'


def coco_bbox(box, width, height):
    """Continuous pixel box (x0, y0, x1, y1) -> COCO's [x, y, w, h], float pixels to COCO_DECIMALS.

    Rounded outwards, so the box still contains the object, and kept within the image.
    """
    scale = 10**COCO_DECIMALS
    x0, y0 = (math.floor(float(v) * scale) / scale for v in box[:2])
    x1 = min(math.ceil(float(box[2]) * scale) / scale, width)
    y1 = min(math.ceil(float(box[3]) * scale) / scale, height)
    return [x0, y0, round(x1 - x0, COCO_DECIMALS), round(y1 - y0, COCO_DECIMALS)]


def _check_file_options(count, seed, test_fraction, jpeg_quality):
    def is_int(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if not is_int(count) or count < 1:
        raise ValueError(f'count must be a positive integer, got {count!r}')
    if not is_int(seed) or seed < 0:
        raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
    if not isinstance(test_fraction, numbers.Real) or not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f'test_fraction must be in [0, 1], got {test_fraction!r}')
    if not is_int(jpeg_quality) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f'jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}')


def _prepare_root(root, layout, overwrite):
    """Creates `root`; refuses a non-empty one unless `overwrite`, which removes `layout` (the
    entries a writer makes) from it and leaves anything else, but only if those entries are a
    writer's own (the MARKER file says so): a user's folders of the same names are never removed.
    Returns root as a str."""
    root = os.fspath(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f'{root} exists and is not a directory')
    os.makedirs(root, exist_ok=True)
    entries = sorted(os.listdir(root))
    if entries and not overwrite:
        raise FileExistsError(
            f'{root} is not empty (it holds {len(entries)} entries, e.g. {entries[0]!r}): write to a new or empty '
            f'directory, or pass overwrite=True (--overwrite) to replace its {", ".join(layout)}')
    present = [name for name in (*layout, MARKER) if os.path.lexists(os.path.join(root, name))]
    if present and not files.is_our_json(os.path.join(root, MARKER)):
        raise FileExistsError(
            f'{root} holds {", ".join(present)} that this writer did not make (no {MARKER} of ssd_jax there): they '
            f'are never replaced. Write to a new or empty directory')
    for name in (*layout, MARKER):
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    return root


def _write_marker(root, summary):
    """Marks `root`'s folders as this writer's (what `overwrite` may replace) -> the summary."""
    files.write_json_atomically(os.path.join(root, MARKER), {'producer': files.PRODUCER, **summary})
    return summary


def _write_bytes(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def _write_text(path, text):
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write(text)


def write_voc_folder(root, count, *, seed=0, test_fraction=0.25, split_files=True, jpeg_quality=90,
                     overwrite=False):
    """Writes `count` shapes images as a VOC folder; the same seed writes the same content.

    Layout (stems shape_000001 .. shape_{count:06d}):
      root/JPEGImages/<stem>.jpg
      root/Annotations/<stem>.xml            VOC XML; about DIFFICULT_FRACTION of objects difficult
      root/ImageSets/Main/trainval.txt      one stem a line (only when split_files)
      root/ImageSets/Main/test.txt          round(count * test_fraction) stems, drawn at random

    Args:
      root: directory to write; created, and refused if not empty unless `overwrite`.
      count: number of images, >= 1.
      seed: non-negative integer; fixes the images, the objects' difficult flags and the split.
      test_fraction: fraction of the images in test.txt, in [0, 1].
      split_files: whether to write ImageSets/Main (without it readers choose their own split).
      jpeg_quality: Pillow JPEG quality, 1..100 (no chroma subsampling).
      overwrite: write into a non-empty `root`, replacing its Annotations, ImageSets and JPEGImages.

    Returns:
      {'format': 'voc', 'root', 'images': count, 'splits': {'trainval': n, 'test': n} (empty without
      split files), 'objects': {class name: n}, 'difficult': n}.
    """
    _check_file_options(count, seed, test_fraction, jpeg_quality)
    root = _prepare_root(root, VOC_LAYOUT, overwrite)
    image_dir, annotation_dir = os.path.join(root, 'JPEGImages'), os.path.join(root, 'Annotations')
    os.makedirs(image_dir)
    os.makedirs(annotation_dir)
    test = set(held_out_numbers(seed, count, test_fraction))
    splits = {'trainval': [], 'test': []}
    objects = collections.Counter()
    num_difficult = 0
    for number in range(1, count + 1):
        example = file_example(seed, number)
        height, width = example.image.shape[:2]
        names = [CLASS_NAMES[label] for label in example.labels]
        difficult = example.flag_draws < DIFFICULT_FRACTION
        pixel_boxes = [voc_pixel_box(box, width, height) for box in example.boxes]
        _write_bytes(os.path.join(image_dir, f'{example.stem}.jpg'), encode_jpeg(example.image, jpeg_quality))
        _write_text(os.path.join(annotation_dir, f'{example.stem}.xml'),
                    voc_annotation_xml(f'{example.stem}.jpg', width, height, names, pixel_boxes, difficult))
        splits['test' if number in test else 'trainval'].append(example.stem)
        objects.update(names)
        num_difficult += int(difficult.sum())
    if split_files:
        main = os.path.join(root, 'ImageSets', 'Main')
        os.makedirs(main)
        for split, stems in splits.items():
            _write_text(os.path.join(main, f'{split}.txt'), ''.join(f'{stem}\n' for stem in stems))
    return _write_marker(root, {
        'format': 'voc',
        'root': root,
        'images': count,
        'splits': {split: len(stems) for split, stems in splits.items()} if split_files else {},
        'objects': {name: objects[name] for name in CLASS_NAMES},
        'difficult': num_difficult,
    })


def write_coco_json(root, count, *, seed=0, test_fraction=0.25, jpeg_quality=90, overwrite=False):
    """Writes `count` shapes images in COCO's layout; the same seed writes the same content.

    Layout (file names shape_000001.jpg ..; image id k for shape_{k:06d}):
      root/train2017/<stem>.jpg
      root/val2017/<stem>.jpg                       round(count * test_fraction) images, drawn at random
      root/annotations/instances_train2017.json
      root/annotations/instances_val2017.json

    Each json holds 'images' (id, file_name, width, height), 'annotations' (id, unique over both
    files; image_id; category_id; bbox [x, y, w, h] float pixels; area, the shape's polygon area;
    iscrowd, 1 for about CROWD_FRACTION of them; segmentation []) and 'categories' (id, name) with
    the ids FILE_CATEGORY_IDS. The images and split equal `write_voc_folder`'s for the same seed.

    Args:
      root: directory to write; created, and refused if not empty unless `overwrite`.
      count: number of images, >= 1.
      seed: non-negative integer; fixes the images, the crowd flags and the split.
      test_fraction: fraction of the images in val2017, in [0, 1].
      jpeg_quality: Pillow JPEG quality, 1..100 (no chroma subsampling).
      overwrite: write into a non-empty `root`, replacing its annotations, train2017 and val2017.

    Returns:
      {'format': 'coco', 'root', 'images': count, 'splits': {'train2017': n, 'val2017': n},
      'objects': {class name: n}, 'iscrowd': n, 'category_ids': {class name: id}}.
    """
    _check_file_options(count, seed, test_fraction, jpeg_quality)
    root = _prepare_root(root, COCO_LAYOUT, overwrite)
    for name in COCO_LAYOUT:
        os.makedirs(os.path.join(root, name))
    categories = [{'id': category_id, 'name': name, 'supercategory': 'shape'}
                  for category_id, name in zip(FILE_CATEGORY_IDS, CLASS_NAMES)]
    files = {split: {'info': {'description': f'ssd_jax synthetic shapes, seed {seed}', 'version': '1.0'},
                     'licenses': [], 'images': [], 'annotations': [], 'categories': categories}
             for split in ('train2017', 'val2017')}
    test = set(held_out_numbers(seed, count, test_fraction))
    objects = collections.Counter()
    num_crowd = num_annotations = 0
    for number in range(1, count + 1):
        example = file_example(seed, number)
        height, width = example.image.shape[:2]
        split = 'val2017' if number in test else 'train2017'
        _write_bytes(os.path.join(root, split, f'{example.stem}.jpg'), encode_jpeg(example.image, jpeg_quality))
        data = files[split]
        data['images'].append({'id': number, 'file_name': f'{example.stem}.jpg', 'width': width, 'height': height})
        crowd = example.flag_draws < CROWD_FRACTION
        for box, label, area, is_crowd in zip(example.boxes, example.labels, example.areas, crowd):
            num_annotations += 1
            data['annotations'].append({
                'id': num_annotations,
                'image_id': number,
                'category_id': FILE_CATEGORY_IDS[label],
                'bbox': coco_bbox(box, width, height),
                'area': round(float(area), COCO_DECIMALS),
                'iscrowd': int(is_crowd),
                'segmentation': [],
            })
            objects[CLASS_NAMES[label]] += 1
        num_crowd += int(crowd.sum())
    for split, data in files.items():
        _write_text(os.path.join(root, 'annotations', f'instances_{split}.json'),
                    json.dumps(data, separators=(',', ':')))
    return _write_marker(root, {
        'format': 'coco',
        'root': root,
        'images': count,
        'splits': {split: len(data['images']) for split, data in files.items()},
        'objects': {name: objects[name] for name in CLASS_NAMES},
        'iscrowd': num_crowd,
        'category_ids': dict(zip(CLASS_NAMES, FILE_CATEGORY_IDS)),
    })
