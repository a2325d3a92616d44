"""SSD's training augmentation as TensorFlow graph ops, seeded with stateless random ops.

Order, as in the Caffe original: photometric distortion -> zoom out (expand onto a canvas
filled with the mean) -> random crop from 7 samplers -> resize -> horizontal flip.

Zoom out and crop are composed as coordinate transforms and applied by a single
``crop_and_resize`` on the mean-subtracted image with extrapolation 0: the area outside the
original image becomes the mean, and no enlarged canvas is ever allocated.

Boxes are (xmin, ymin, xmax, ymax) normalised to the current image; every random choice
comes from a ``seed`` [2] int tensor, so the same seed gives the same output.
"""

from __future__ import annotations

import math

import tensorflow as tf

from ssd_jax.configs import IMAGENET_MEAN_RGB

# Sampler minimum IoUs; 0 is the unconstrained sampler. The "whole image" choice is added
# separately and is always available.
CROP_MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.0)


def _seeds(seed, n: int):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _coin(seed, probability: float = 0.5):
    return tf.random.stateless_uniform([], seed) < probability


def photometric_distort(image, seed, *, brightness_delta=32.0, contrast_range=(0.5, 1.5),
                        saturation_range=(0.5, 1.5), hue_delta_degrees=18.0):
    """float32 [H, W, 3] in [0, 255] -> the same, distorted.

    Each of brightness (+-32), contrast (x 0.5-1.5, Caffe's plain scaling), saturation
    (x 0.5-1.5) and hue (+-18 degrees) applies with probability 0.5; contrast comes either first
    or last, at random, as in Caffe's ``DistortImage``.
    """
    seeds = _seeds(seed, 10)

    def maybe(coin_seed, fn, x):
        return tf.cond(_coin(coin_seed), lambda: fn(x), lambda: x)

    def brightness(x):
        return x + tf.random.stateless_uniform([], seeds[1], -brightness_delta, brightness_delta)

    def contrast(x):
        return x * tf.random.stateless_uniform([], seeds[3], *contrast_range)

    def saturation(x):
        factor = tf.random.stateless_uniform([], seeds[5], *saturation_range)
        return tf.image.adjust_saturation(x / 255.0, factor) * 255.0

    def hue(x):
        delta = tf.random.stateless_uniform([], seeds[7], -hue_delta_degrees, hue_delta_degrees) / 360.0
        return tf.image.adjust_hue(x / 255.0, delta) * 255.0

    def clip(x):
        return tf.clip_by_value(x, 0.0, 255.0)

    image = clip(maybe(seeds[0], brightness, image))
    contrast_first = _coin(seeds[8])
    image = tf.cond(contrast_first, lambda: clip(maybe(seeds[2], contrast, image)), lambda: image)
    image = clip(maybe(seeds[4], saturation, image))
    image = clip(maybe(seeds[6], hue, image))
    image = tf.cond(contrast_first, lambda: image, lambda: clip(maybe(seeds[9], contrast, image)))
    return image


def iou_matrix(boxes_a, boxes_b):
    """Corner boxes [N, 4] x [M, 4] -> IoU [N, M]; empty unions give 0."""
    lo = tf.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    hi = tf.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = tf.reduce_prod(tf.maximum(hi - lo, 0.0), axis=-1)
    area_a = tf.reduce_prod(boxes_a[:, 2:] - boxes_a[:, :2], axis=-1)
    area_b = tf.reduce_prod(boxes_b[:, 2:] - boxes_b[:, :2], axis=-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return tf.math.divide_no_nan(intersection, union)


def centers_inside(boxes, crops):
    """Whether each box centre lies strictly inside each crop: [N, 4] x [K, 4] -> [K, N] bool."""
    center = (boxes[:, :2] + boxes[:, 2:]) / 2
    return tf.reduce_all((center[None] > crops[:, None, :2]) & (center[None] < crops[:, None, 2:]), axis=-1)


def sample_zoom_out(seed, *, probability=0.5, max_ratio=4.0):
    """The canvas of the zoom out, in the image's normalised coordinates -> ([4] xyxy, ratio).

    With ``probability`` the image is placed at a random spot of a square-scaled canvas
    ``ratio`` in [1, max_ratio] times its size; otherwise the canvas is the image itself.
    """
    seeds = _seeds(seed, 3)
    ratio = tf.where(_coin(seeds[0], probability),
                     tf.random.stateless_uniform([], seeds[1], 1.0, max_ratio), 1.0)
    offset = tf.random.stateless_uniform([2], seeds[2]) * (ratio - 1.0)  # image origin on the canvas
    origin = -offset
    return tf.concat([origin, origin + ratio], axis=0), ratio


def sample_crop(boxes, seed, *, min_ious=CROP_MIN_IOUS, trials=50, scale_range=(0.3, 1.0),
                aspect_range=(0.5, 2.0)):
    """Chooses SSD's random crop for ``boxes`` [N, 4] -> (crop [4] xyxy normalised, min IoU []).

    Each sampler draws ``trials`` crops with scale in ``scale_range`` and aspect ratio in
    ``aspect_range`` (clamped to [scale^2, 1/scale^2] as Caffe does) and keeps its first valid
    one: IoU with some box >= its minimum, and at least one box centre inside. The result is
    drawn uniformly among the whole image and the samplers that found a crop (Caffe's batch
    sampler). All trials are drawn at once: no Python or graph loop. The second result is the
    chosen sampler's minimum IoU (0 unconstrained, -1 for the whole image), for tests.
    """
    num_samplers = len(min_ious)
    seeds = _seeds(seed, 5)
    shape = [num_samplers, trials]
    scale = tf.random.stateless_uniform(shape, seeds[0], *scale_range)
    aspect = tf.random.stateless_uniform(shape, seeds[1], *aspect_range)
    aspect = tf.clip_by_value(aspect, scale**2, 1.0 / scale**2)
    # At most the image: scale * sqrt(1 / scale^2) can round to just above 1, which would put the
    # crop's origin just below 0.
    width = tf.minimum(scale * tf.sqrt(aspect), 1.0)
    height = tf.minimum(scale / tf.sqrt(aspect), 1.0)
    x0 = tf.random.stateless_uniform(shape, seeds[2]) * (1.0 - width)
    y0 = tf.random.stateless_uniform(shape, seeds[3]) * (1.0 - height)
    crops = tf.reshape(tf.stack([x0, y0, x0 + width, y0 + height], axis=-1), [-1, 4])  # [S*T, 4]

    has_boxes = tf.shape(boxes)[0] > 0
    best_iou = tf.reduce_max(tf.concat([iou_matrix(crops, boxes), tf.fill([num_samplers * trials, 1], -1.0)], 1), 1)
    keeps_a_box = tf.reduce_any(centers_inside(boxes, crops), axis=-1) | tf.logical_not(has_boxes)
    minimum = tf.repeat(tf.constant(min_ious, tf.float32), trials)
    valid = tf.reshape(((best_iou >= minimum) | (minimum <= 0.0)) & keeps_a_box, shape)

    first_valid = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)  # [S]
    chosen = tf.gather(tf.reshape(crops, [num_samplers, trials, 4]), first_valid, batch_dims=1)
    candidates = tf.concat([tf.constant([[0.0, 0.0, 1.0, 1.0]]), chosen], axis=0)  # [S+1, 4]
    available = tf.concat([[True], tf.reduce_any(valid, axis=1)], axis=0)
    logits = tf.where(available, 0.0, -math.inf)[None]
    pick = tf.random.stateless_categorical(logits, 1, seeds[4])[0, 0]
    minimums = tf.concat([[-1.0], tf.constant(min_ious, tf.float32)], axis=0)
    return candidates[pick], minimums[pick]


def to_frame(boxes, frame):
    """Re-expresses boxes [N, 4] in the normalised coordinates of ``frame`` [4] (same units)."""
    origin = tf.tile(frame[:2], [2])
    size = tf.tile(frame[2:] - frame[:2], [2])
    return (boxes - origin) / size


def crop_boxes(boxes, labels, crop):
    """Keeps boxes whose centre is inside ``crop`` [4], in the crop's coordinates, clipped.

    boxes [N, 4], labels [N, ...] -> (boxes [M, 4], labels [M, ...]) with M <= N.
    """
    keep = centers_inside(boxes, crop[None])[0]
    boxes = tf.clip_by_value(to_frame(tf.boolean_mask(boxes, keep), crop), 0.0, 1.0)
    return boxes, tf.boolean_mask(labels, keep)


def crop_and_resize(image, region, size: int, fill=IMAGENET_MEAN_RGB):
    """Cuts ``region`` [4] (xyxy in the image's normalised coordinates, may extend past it)
    out of float ``image`` [H, W, 3] and resizes it bilinearly to [size, size, 3].

    Sampling uses half-pixel centres, like ``tf.image.resize`` and ``detect``; area outside the
    image takes the value ``fill``.
    """
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)

    def endpoints(lo, hi, n):
        # Output pixel i samples the continuous coordinate lo + (i + .5) / size * (hi - lo), i.e.
        # pixel index u_i = that * n - .5. crop_and_resize samples start + i (end - start) / (size - 1)
        # in units of (rows - 1) of the image it gets: here one padded by an edge pixel each side,
        # so that samples within half a pixel of the border clamp to it as tf.image.resize does.
        first = lo * n + 0.5 * (hi - lo) * n / size - 0.5
        last = lo * n + (size - 0.5) / size * (hi - lo) * n - 0.5
        return (first + 1.0) / (n + 1.0), (last + 1.0) / (n + 1.0)

    y0, y1 = endpoints(region[1], region[3], height)
    x0, x1 = endpoints(region[0], region[2], width)
    fill = tf.constant(fill, tf.float32)
    padded = tf.pad(image - fill, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    out = tf.image.crop_and_resize(padded[None], [[y0, x0, y1, x1]], [0], [size, size],
                                   method="bilinear", extrapolation_value=0.0)[0]
    return out + fill


def flip_boxes(boxes):
    """Mirrors normalised xyxy boxes [N, 4] left-right."""
    return tf.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=-1)


def ssd_augment(image, boxes, labels, seed, *, size: int, zoom_out_probability=0.5, max_zoom_out=4.0,
                crop_probability=1.0, photometric=True):
    """SSD's training transform of one example.

    Args:
      image: uint8 or float [H, W, 3] RGB.
      boxes: float32 [N, 4] xyxy normalised; labels [N] (any dtype), kept in step with boxes.
      seed: [2] int tensor.
      size: output side.
      crop_probability: chance that the min-IoU crop sampler runs at all (SSD: 1; otherwise the
        whole image is kept). Short schedules from scratch learn faster with fewer crops.
    Returns:
      (image float32 [size, size, 3] in [0, 255], boxes [M, 4], labels [M]); M <= N.
    """
    seeds = _seeds(seed, 4)
    image = tf.cast(image, tf.float32)
    if photometric:
        image = photometric_distort(image, seeds[0])
    canvas, _ = sample_zoom_out(seeds[1], probability=zoom_out_probability, max_ratio=max_zoom_out)
    boxes_on_canvas = to_frame(boxes, canvas)
    crop = whole = tf.constant([0.0, 0.0, 1.0, 1.0])
    if crop_probability > 0.0:  # its 300 trial crops cost time: skipped when never used
        crop, _ = sample_crop(boxes_on_canvas, seeds[2])
    if 0.0 < crop_probability < 1.0:
        skip_seed = tf.random.experimental.stateless_fold_in(seeds[2], 1)  # leaves the other draws as they were
        crop = tf.where(_coin(skip_seed, crop_probability), crop, whole)
    boxes, labels = crop_boxes(boxes_on_canvas, labels, crop)
    # The crop in the original image's coordinates: canvas origin + crop * canvas size.
    canvas_size = canvas[2:] - canvas[:2]
    region = tf.concat([canvas[:2] + crop[:2] * canvas_size, canvas[:2] + crop[2:] * canvas_size], 0)
    image = crop_and_resize(image, region, size)
    flip = _coin(seeds[3])
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    boxes = tf.cond(flip, lambda: flip_boxes(boxes), lambda: boxes)
    return tf.clip_by_value(image, 0.0, 255.0), boxes, labels
