"""SSD augmentation invariants over many random draws, and its geometry against drawn boxes."""

import numpy as np
import pytest
import tensorflow as tf

from ssd_jax.configs import IMAGENET_MEAN_RGB
from ssd_jax.data import augment

DRAWS = 200


def random_boxes(rng, n):
    lo = rng.uniform(0, 0.8, (n, 2))
    hi = np.minimum(lo + rng.uniform(0.02, 0.6, (n, 2)), 1.0)
    return np.concatenate([lo, hi], axis=1).astype(np.float32)


def iou_numpy(box, boxes):
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter
    return inter / union


@tf.function
def _crop_and_keep(boxes, labels, seed):
    crop, minimum = augment.sample_crop(boxes, seed)
    kept_boxes, kept_labels = augment.crop_boxes(boxes, labels, crop)
    return crop, minimum, kept_boxes, kept_labels


def test_crop_sampler_meets_its_constraints_and_the_centre_rule():
    rng = np.random.default_rng(0)
    chosen = []
    for draw in range(DRAWS):
        boxes = random_boxes(rng, int(rng.integers(1, 6)))
        labels = np.arange(1, len(boxes) + 1, dtype=np.int32)
        crop, minimum, kept, kept_labels = (t.numpy() for t in _crop_and_keep(boxes, labels, tf.constant([7, draw])))
        chosen.append(float(minimum))
        width, height = crop[2] - crop[0], crop[3] - crop[1]
        assert np.all(crop >= 0) and np.all(crop <= 1 + 1e-6)
        if minimum >= 0:  # a sampled crop, not the whole image
            assert 0.3 - 1e-5 <= np.sqrt(width * height) <= 1 + 1e-5  # scale range
            assert 0.5 - 1e-4 <= width / height <= 2 + 1e-4  # aspect range
            assert iou_numpy(crop, boxes).max() >= minimum - 1e-6  # the IoU constraint is applied
        # Centre rule, against numpy: exactly the boxes whose centre is inside the crop survive.
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.all((centre > crop[:2]) & (centre < crop[2:]), axis=1)
        assert inside.any()  # a crop always keeps some object
        np.testing.assert_array_equal(kept_labels, labels[inside])
        expected = np.clip((boxes[inside] - np.tile(crop[:2], 2)) / np.tile(crop[2:] - crop[:2], 2), 0, 1)
        np.testing.assert_allclose(kept, expected, atol=1e-5)
        assert np.all(kept[:, 2:] > kept[:, :2])  # non-empty
    # Every sampler is drawn (0.9 rarely succeeds on random boxes: tested below).
    assert set(np.round(chosen, 1)) >= {-1.0, 0.0, 0.1, 0.3, 0.5, 0.7}


def test_strictest_sampler_succeeds_when_it_can():
    boxes = np.array([[0.05, 0.1, 0.95, 0.9]], np.float32)  # crops of scale ~0.85 can reach IoU 0.9
    hits = 0
    for draw in range(100):
        crop, minimum, _, _ = _crop_and_keep(boxes, np.array([1], np.int32), tf.constant([11, draw]))
        if abs(float(minimum) - 0.9) < 1e-6:
            assert iou_numpy(crop.numpy(), boxes).max() >= 0.9 - 1e-6
            hits += 1
    assert hits > 0


def test_crop_without_boxes_is_still_valid():
    crop, minimum, kept, _ = _crop_and_keep(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                                            tf.constant([1, 2]))
    assert kept.shape[0] == 0 and float(minimum) in (-1.0, 0.0)  # only unconstrained crops can apply
    assert np.all(crop.numpy() >= 0) and np.all(crop.numpy() <= 1 + 1e-6)


@tf.function
def _augment(image, boxes, labels, seed, photometric=True):
    return augment.ssd_augment(image, boxes, labels, seed, size=96, photometric=photometric)


def test_augmented_boxes_stay_inside_and_non_empty_and_are_reproducible():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)
    for draw in range(60):
        boxes = random_boxes(rng, 4)
        labels = np.arange(1, 5, dtype=np.int32)
        out_image, out_boxes, out_labels = _augment(image, boxes, labels, tf.constant([3, draw]))
        assert out_image.shape == (96, 96, 3)
        assert 0 <= out_image.numpy().min() and out_image.numpy().max() <= 255
        b = out_boxes.numpy()
        assert len(b) >= 1 and np.all((b >= 0) & (b <= 1)) and np.all(b[:, 2:] > b[:, :2])
        assert set(out_labels.numpy()) <= set(labels)
        again = _augment(image, boxes, labels, tf.constant([3, draw]))
        for first, second in zip((out_image, out_boxes, out_labels), again):
            np.testing.assert_array_equal(first.numpy(), second.numpy())
    other = _augment(image, boxes, labels, tf.constant([4, 0]))[0].numpy()
    assert not np.array_equal(other, _augment(image, boxes, labels, tf.constant([3, 0]))[0].numpy())


def test_geometry_follows_the_pixels():
    """A white rectangle drawn on black: after zoom-out, crop, resize and flip, the returned
    box must frame the white pixels (within the blur of bilinear resizing)."""
    height, width, size = 120, 160, 96
    x0, y0, x1, y1 = 40, 30, 100, 90
    image = np.zeros((height, width, 3), np.uint8)
    image[y0:y1, x0:x1] = 255
    box = np.array([[x0 / width, y0 / height, x1 / width, y1 / height]], np.float32)
    checked = 0
    for draw in range(60):
        out, boxes, _ = _augment(image, box, np.array([1], np.int32), tf.constant([5, draw]), photometric=False)
        if boxes.shape[0] == 0:
            continue
        white = out.numpy().mean(-1) > 200  # the canvas fill is the mean (~115), the image black
        ys, xs = np.nonzero(white)
        if len(xs) < 4:
            continue
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / size
        np.testing.assert_allclose(found, np.clip(boxes.numpy()[0], 0, 1), atol=2.5 / size)
        checked += 1
    assert checked > 30


def test_zoom_out_fills_with_the_mean():
    image = np.zeros((50, 50, 3), np.float32)
    # Region twice the image, image in its top-left quarter: the rest is the mean.
    out = augment.crop_and_resize(image, tf.constant([0.0, 0.0, 2.0, 2.0]), 40).numpy()
    np.testing.assert_allclose(out[:19, :19], 0, atol=1e-4)
    np.testing.assert_allclose(out[22:, 22:], np.broadcast_to(IMAGENET_MEAN_RGB, (18, 18, 3)), atol=1e-3)


@pytest.mark.parametrize("shape", [(90, 60), (37, 53)])
def test_whole_image_crop_equals_half_pixel_resize(shape):
    image = np.random.default_rng(2).uniform(0, 255, shape + (3,)).astype(np.float32)
    ours = augment.crop_and_resize(image, tf.constant([0.0, 0.0, 1.0, 1.0]), 48).numpy()
    reference = tf.image.resize(image, [48, 48], method="bilinear", antialias=False).numpy()
    np.testing.assert_allclose(ours, reference, atol=5e-3)  # float32 on a 0..255 scale


def test_aligned_crop_copies_pixels():
    image = np.random.default_rng(3).uniform(0, 255, (64, 64, 3)).astype(np.float32)
    out = augment.crop_and_resize(image, tf.constant([0.5, 0.25, 1.0, 0.75]), 32).numpy()
    np.testing.assert_allclose(out, image[16:48, 32:64], atol=1e-3)


def test_photometric_distortion_stays_in_range_and_changes_colour():
    image = tf.constant(np.random.default_rng(4).uniform(0, 255, (20, 20, 3)), tf.float32)
    changed = 0
    for draw in range(20):
        out = augment.photometric_distort(image, tf.constant([9, draw])).numpy()
        assert out.min() >= 0 and out.max() <= 255
        changed += not np.allclose(out, image.numpy())
    assert changed >= 15  # each of four distortions fires with p = 0.5: all skipped in 1/16 of draws


def test_flip_boxes():
    flipped = augment.flip_boxes(tf.constant([[0.1, 0.2, 0.4, 0.9]])).numpy()
    np.testing.assert_allclose(flipped, [[0.6, 0.2, 0.9, 0.9]], atol=1e-7)


def test_crop_probability_zero_keeps_the_whole_image():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    boxes = random_boxes(rng, 4)
    labels = np.arange(1, 5, dtype=np.int32)
    for draw in range(20):
        _, out_boxes, out_labels = augment.ssd_augment(image, boxes, labels, tf.constant([5, draw]), size=32,
                                                       zoom_out_probability=0.0, crop_probability=0.0)
        out_boxes = out_boxes.numpy()
        np.testing.assert_array_equal(out_labels, labels)  # every object kept, none cropped
        unflipped = np.allclose(out_boxes, boxes, atol=1e-6)
        assert unflipped or np.allclose(out_boxes, augment.flip_boxes(boxes).numpy(), atol=1e-6)
