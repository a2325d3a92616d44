"""The synthetic "shapes" data set: the TFDS builder (tiny config) and the numpy generator."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssd_jax.data import shapes

NUM_CLASSES = len(shapes.CLASS_NAMES)


def _prepare_tiny(data_dir):
    builder = tfds.builder('shapes/tiny', data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return builder


def _load(builder, split):
    """All examples of a split as a dict id -> numpy example."""
    examples = tfds.as_numpy(builder.as_dataset(split=split))
    return {int(ex['image/id']): ex for ex in examples}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    builder = _prepare_tiny(tmp_path_factory.mktemp('tfds'))
    return builder, {split: _load(builder, split) for split in ('train', 'test')}


# ---------------------------------------------------------------------------------------------
# TFDS builder.


def test_builder_metadata(tiny):
    builder, _ = tiny
    assert builder.name == 'shapes'
    assert str(builder.version) == '1.1.0'  # ArrayRecord files
    assert builder.info.features['objects']['label'].names == list(shapes.CLASS_NAMES)
    assert shapes.Shapes.default_builder_config.name == 'full'
    full = shapes.Shapes.builder_configs['full']
    assert (full.num_train, full.num_test) == (3000, 500)


def test_split_counts(tiny):
    builder, data = tiny
    assert builder.info.splits['train'].num_examples == 16
    assert builder.info.splits['test'].num_examples == 8
    assert sorted(data['train']) == list(range(16))
    assert sorted(data['test']) == list(range(8))


@pytest.mark.parametrize('split', ['train', 'test'])
def test_example_contents(tiny, split):
    _, data = tiny
    sizes = set()
    for index, ex in data[split].items():
        image, objects = ex['image'], ex['objects']
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert 160 <= image.shape[0] <= 320 and 160 <= image.shape[1] <= 320
        assert image.std() > 5  # textured, not blank
        sizes.add(image.shape[:2])
        assert ex['image/filename'].decode() == f'{split}_{index:06d}.jpg'
        bbox, labels = objects['bbox'], objects['label']
        assert bbox.dtype == np.float32 and bbox.shape == (len(labels), 4)
        assert 1 <= len(labels) <= shapes.MAX_SHAPES
        assert np.all((bbox >= 0) & (bbox <= 1))
        ymin, xmin, ymax, xmax = bbox.T
        assert np.all(ymin < ymax) and np.all(xmin < xmax)
        assert np.all((labels >= 0) & (labels < NUM_CLASSES))
        assert not objects['is_difficult'].any()
    assert len(sizes) > 1  # sizes vary per image


def test_stored_examples_equal_generate_example(tiny):
    """TFDS stores exactly what generate_example draws: its JPEG bytes, boxes swapped to yxyx."""
    builder, data = tiny
    for split, examples in data.items():
        encoded = tfds.as_numpy(builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()}))
        encoded = {int(ex['image/id']): ex['image'] for ex in encoded}
        for index in (0, len(examples) - 1):
            image, boxes, labels = shapes.generate_example(shapes.example_rng(split, index))
            stored = examples[index]
            assert encoded[index] == shapes.encode_jpeg(image)
            assert stored['image'].shape == image.shape
            assert np.abs(stored['image'].astype(int) - image).mean() < 4  # JPEG at quality 95
            np.testing.assert_array_equal(stored['objects']['bbox'], boxes[:, [1, 0, 3, 2]])
            np.testing.assert_array_equal(stored['objects']['label'], labels)


def test_two_generations_are_identical(tiny, tmp_path):
    _, first = tiny
    second = _prepare_tiny(tmp_path)
    for split in ('train', 'test'):
        again = _load(second, split)
        assert again.keys() == first[split].keys()
        for index, ex in again.items():
            assert ex['image'].tobytes() == first[split][index]['image'].tobytes()
            assert ex['objects']['bbox'].tobytes() == first[split][index]['objects']['bbox'].tobytes()
            assert ex['objects']['label'].tobytes() == first[split][index]['objects']['label'].tobytes()


# ---------------------------------------------------------------------------------------------
# The generator itself.


def test_generate_example_is_deterministic_and_varies():
    a = shapes.generate_example(np.random.default_rng([7, 3]))
    b = shapes.generate_example(np.random.default_rng([7, 3]))
    c = shapes.generate_example(np.random.default_rng([7, 4]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    train0, test0 = (shapes.generate_example(shapes.example_rng(s, 0))[0] for s in ('train', 'test'))
    assert train0.shape != test0.shape or not np.array_equal(train0, test0)


def test_generate_example_fixed_size():
    image, boxes, labels = shapes.generate_example(np.random.default_rng(0), height=100, width=250)
    assert image.shape == (100, 250, 3) and image.dtype == np.uint8
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)


def _extent_error(mask, box_px):
    """Largest distance in pixels between a box (xmin, ymin, xmax, ymax) and the extent of a bool
    mask [H, W], both as continuous edges (pixel j spans [j, j + 1))."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    extent = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)
    return float(np.abs(extent - box_px).max())


def _alone(polygon, height, width):
    """The module's rasterisation of one polygon on a blank canvas -> bool [H, W] of touched pixels."""
    coverage, (y0, x0) = shapes.rasterise(polygon, height, width)
    canvas = np.zeros((height, width), dtype=bool)
    canvas[y0:y0 + coverage.shape[0], x0:x0 + coverage.shape[1]] = coverage > 0
    return canvas


def _compositions(n, split='test'):
    return [shapes.compose(shapes.example_rng(split, i)) for i in range(n)]


def test_boxes_match_each_shape_rendered_alone():
    checked = 0
    for comp in _compositions(40):
        height, width = comp.image.shape[:2]
        scale = np.array([width, height, width, height])
        for polygon, box in zip(comp.polygons, comp.boxes):
            alone = _alone(polygon, height, width)
            box_px = box.astype(np.float64) * scale
            assert _extent_error(alone, box_px) <= 1.0, (box_px, polygon)
            # The check has teeth: a box 2 px off on any one side fails it.
            for side in range(4):
                assert _extent_error(alone, box_px + 2.0 * np.eye(4)[side]) > 1.0
            checked += 1
    assert checked > 80


def _patch(box_px, height, width):
    """bool [H, W]: the pixels a box touches (a little generous for float32 round trips)."""
    x0, y0 = np.floor(box_px[:2] - 1e-3).astype(int)
    x1, y1 = np.ceil(box_px[2:] + 1e-3).astype(int)
    patch = np.zeros((height, width), dtype=bool)
    patch[max(y0, 0):y1, max(x0, 0):x1] = True
    return patch


def test_boxes_match_changed_pixels_in_the_image():
    """Independent of the rasteriser: in the final image, nothing outside the boxes differs from
    the background, and a shape whose box meets no other box changed pixels out to each side of
    its box, within 1 px."""
    checked = 0
    for comp in _compositions(40):
        height, width = comp.image.shape[:2]
        boxes_px = comp.boxes.astype(np.float64) * [width, height, width, height]
        patches = [_patch(box, height, width) for box in boxes_px]
        changed = np.any(comp.image != comp.background, axis=-1)
        assert not np.any(changed & ~np.any(patches, axis=0))
        for i, (box, patch) in enumerate(zip(boxes_px, patches)):
            if any(np.any(patch & other) for j, other in enumerate(patches) if j != i):
                continue
            assert _extent_error(changed & patch, box) <= 1.0, box
            checked += 1
    assert checked > 30


def test_occlusion_leaves_half_of_each_shape_visible():
    for comp in _compositions(40, split='train'):
        height, width = comp.image.shape[:2]
        masks = []
        for polygon in comp.polygons:
            coverage, (y0, x0) = shapes.rasterise(polygon, height, width)
            mask = np.zeros((height, width), dtype=bool)
            mask[y0:y0 + coverage.shape[0], x0:x0 + coverage.shape[1]] = coverage >= 0.5
            masks.append(mask)
        for i, mask in enumerate(masks):
            later = np.any(masks[i + 1:], axis=0) if i + 1 < len(masks) else np.zeros_like(mask)
            assert np.count_nonzero(mask & ~later) >= shapes.MIN_VISIBLE * np.count_nonzero(mask)


def test_class_balance_and_size_spread():
    labels, sides, counts, image_sizes = [], [], [], set()
    for i in range(200):
        image, boxes, lab = shapes.generate_example(shapes.example_rng('train', i))
        height, width = image.shape[:2]
        image_sizes.add((height, width))
        size_px = (boxes[:, 2:] - boxes[:, :2]) * [width, height]
        sides.extend(size_px.max(axis=1) / min(height, width))
        labels.extend(lab)
        counts.append(len(lab))
    histogram = np.bincount(labels, minlength=NUM_CLASSES)
    assert histogram.shape == (NUM_CLASSES,)
    assert histogram.min() >= 0.12 * len(labels), histogram  # uniform would be 0.2 each
    assert set(counts) == set(range(1, shapes.MAX_SHAPES + 1))
    sides = np.asarray(sides)
    assert sides.min() >= 0.079 and sides.max() <= 0.701
    assert np.mean(sides < 0.15) > 0.1 and np.mean(sides > 0.4) > 0.1
    assert len(image_sizes) > 150
