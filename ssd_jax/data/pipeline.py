"""tf.data pipelines: a source's canonical examples (``ssd_jax.data.canonical``) -> training and
evaluation batches.

Training batches (numpy): image uint8 [B, S, S, 3], boxes float32 [B, G, 4], labels int32 [B, G]
(0 = padding), mask bool [B, G], G = the config's max_boxes. Evaluation batches add difficult
[B, G], image_id [B] and original_size [B, 2] (height, width); their images are only resized,
and G is the largest object count of the batch: evaluation never drops ground truth.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from ssd_jax.data import augment
from ssd_jax.data.canonical import AUTOTUNE, IndexedSplit, drop_difficult, orient


def pad_objects(example, max_boxes: int, keys=("boxes", "labels")):
    """Pads (or cuts, keeping the largest boxes) the objects of an example to ``max_boxes``.

    Adds ``mask`` [max_boxes] and ``num_dropped`` (boxes cut for lack of room).
    """
    boxes = example["boxes"]
    count = tf.shape(boxes)[0]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = tf.argsort(area, direction="DESCENDING", stable=True)[:max_boxes]
    order = tf.sort(order)  # keep the surviving boxes in their original order
    kept = tf.shape(order)[0]
    out = dict(example)
    for key in keys:
        values = tf.gather(example[key], order)
        padding = [[0, max_boxes - kept]] + [[0, 0]] * (len(values.shape) - 1)
        out[key] = tf.ensure_shape(tf.pad(values, padding), [max_boxes] + values.shape[1:].as_list())
    out["mask"] = tf.range(max_boxes) < kept
    out["num_dropped"] = count - kept
    return out


def _augmenter(*, image_size: int, max_boxes: int, seed: int, augment_options: dict | None):
    """(occurrence n, canonical example) -> one training example: decoded if still encoded, turned
    upright, augmented with seed (seed, n), resized, objects padded to ``max_boxes``."""

    def transform(occurrence, example):
        image = example["image"]
        if image.dtype == tf.string:  # left encoded by the source: decode only what is used
            image = tf.io.decode_image(image, channels=3, expand_animations=False)
            if "orientation" in example:  # a photo with an EXIF orientation (a source on disk)
                image = orient(image, example["orientation"])
        image, boxes, labels = augment.ssd_augment(
            image, example["boxes"], example["labels"], tf.stack([tf.cast(seed, tf.int64), occurrence]),
            size=image_size, **(augment_options or {}))
        image = tf.cast(tf.round(image), tf.uint8)
        image = tf.ensure_shape(image, [image_size, image_size, 3])
        return pad_objects({"image": image, "boxes": boxes, "labels": labels}, max_boxes)

    return transform


def train_dataset(source: tf.data.Dataset, *, batch_size: int, image_size: int, max_boxes: int = 100,
                  seed: int = 0, shuffle_buffer: int = 2048, start_index: int = 0,
                  use_difficult: bool = True, augment_options: dict | None = None) -> tf.data.Dataset:
    """Endless, shuffled, augmented training batches (``num_dropped`` still attached), from a
    source read in order (TFRecord data).

    Every example occurrence n (counting over epochs) is augmented with seed (seed, n), and the
    shuffle is seeded, so the stream is the same on every run; ``start_index`` skips the first
    examples cheaply (before decoding and augmenting) to resume a run where it stopped. Sources
    with random access take ``global_train_dataset`` instead.
    """
    if not use_difficult:
        source = source.map(drop_difficult, num_parallel_calls=AUTOTUNE)
    ds = source.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().skip(start_index)
    transform = _augmenter(image_size=image_size, max_boxes=max_boxes, seed=seed, augment_options=augment_options)
    ds = ds.map(transform, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def global_positions(step, *, global_batch_size: int, process_index: int, process_count: int):
    """The positions in the endless global example stream that process ``process_index`` reads
    at ``step``: its slice [B_local] of the global batch [step * B, (step + 1) * B)."""
    local = global_batch_size // process_count
    start = tf.cast(step, tf.int64) * global_batch_size + process_index * local
    return tf.range(start, start + local, dtype=tf.int64)


def global_order(position, *, size: int, seed: int):
    """Position in the endless stream -> example index: a seeded permutation of the split per
    epoch (``tf.random.experimental.index_shuffle``: random access, nothing materialised)."""
    epoch, within = position // size, position % size
    return tf.random.experimental.index_shuffle(within, tf.stack([tf.cast(seed, tf.int64), epoch]), size - 1)


def global_train_dataset(split: IndexedSplit, *, global_batch_size: int, image_size: int, max_boxes: int = 100,
                         seed: int = 0, start_step: int = 0, process_index: int = 0, process_count: int = 1,
                         use_difficult: bool = True, augment_options: dict | None = None) -> tf.data.Dataset:
    """This process's part of every global training batch, from ``start_step`` on.

    The global stream is fixed by the seed alone: position n holds example ``global_order(n)``,
    augmented with seed (seed, n), and the global batch of step s is positions [s * B, (s + 1) * B).
    Process p reads, decodes and augments only its slice of each global batch, so the global
    batches are the same whatever the number of processes and devices, and resuming at a step
    costs nothing.
    """
    steps = tf.data.Dataset.range(start_step, 2**62)

    def positions_of(step):
        return global_positions(step, global_batch_size=global_batch_size, process_index=process_index,
                                process_count=process_count)

    def keep(example):
        return drop_difficult(example) if not use_difficult else example

    if split.fetch_many is not None:  # this step's records fetched at once, parsed one by one in the graph
        def fetch(step):
            positions = positions_of(step)
            indices = tf.map_fn(lambda p: global_order(p, size=split.size, seed=seed), positions)
            return positions, split.fetch_many(indices)

        ds = steps.map(fetch, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()
        ds = ds.map(lambda position, record: (position, keep(split.parse(record))), num_parallel_calls=AUTOTUNE,
                    deterministic=True)
    else:
        positions = steps.flat_map(lambda step: tf.data.Dataset.from_tensor_slices(positions_of(step)))
        ds = positions.map(lambda p: (p, keep(split.read(global_order(p, size=split.size, seed=seed)))),
                           num_parallel_calls=AUTOTUNE, deterministic=True)
    transform = _augmenter(image_size=image_size, max_boxes=max_boxes, seed=seed, augment_options=augment_options)
    ds = ds.map(transform, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(global_batch_size // process_count, drop_remainder=True).prefetch(AUTOTUNE)


def resize_for_eval(example, image_size: int):
    """Resize only (bilinear, half-pixel centres, as ``detect``); keeps the original size."""
    image = example["image"]
    original_size = tf.shape(image)[:2]
    resized = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], method="bilinear",
                              antialias=False)
    return {**example, "image": tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8),
            "original_size": tf.cast(original_size, tf.int32)}


def eval_dataset(source: tf.data.Dataset, *, batch_size: int, image_size: int) -> tf.data.Dataset:
    """One pass over ``source`` in batches; the last batch may be smaller. Objects are padded to
    the largest count of each batch (with ``mask``), never cut: every ground-truth box is scored."""

    def prepare(example):
        example = resize_for_eval(example, image_size)
        fields = ("image", "boxes", "labels", "difficult", "image_id", "original_size")
        return {**{k: example[k] for k in fields}, "mask": tf.ones_like(example["labels"], tf.bool)}

    return source.map(prepare, num_parallel_calls=AUTOTUNE).padded_batch(batch_size).prefetch(AUTOTUNE)


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    """Iterates numpy batches, logging a warning (with a running count) when boxes were cut."""
    dropped_images = dropped_boxes = 0
    for batch in ds.as_numpy_iterator():
        dropped = batch.pop("num_dropped", None)
        if dropped is not None and np.any(dropped > 0):
            dropped_images += int(np.sum(dropped > 0))
            dropped_boxes += int(np.sum(dropped))
            logging.warning("max_boxes too small: kept the largest boxes; %d boxes dropped from %d images so far",
                            dropped_boxes, dropped_images)
        yield batch
