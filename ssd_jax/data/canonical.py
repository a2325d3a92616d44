"""The canonical example every data source yields, and the rules all sources follow.

A canonical example is a dict of TF tensors, whatever the source:
  image      uint8 [H, W, 3] RGB (or the still encoded file, a string, until the pipeline decodes it)
  boxes      float32 [N, 4] (xmin, ymin, xmax, ymax) normalised
  labels     int32 [N], dataset class k -> k + 1 (0 is background)
  difficult  bool [N]
  image_id   int64 []
  orientation  int32 [] (optional): the EXIF orientation to apply once the image is decoded

Rules: a box is clipped to the image, then kept if it still has a positive width and height; an
image's id is the number in its file name ('000005.jpg' -> 5), or a hash of the name. A source
with random access gives an ``IndexedSplit``; ``indexed_dataset`` streams it in index order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
# The decoded canonical example as a tf.data signature (tf.data.Dataset.from_generator).
CANONICAL_SIGNATURE = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "labels": tf.TensorSpec([None], tf.int32),
    "difficult": tf.TensorSpec([None], tf.bool),
    "image_id": tf.TensorSpec([], tf.int64),
}


def clip_and_keep(boxes):
    """Corner boxes [N, 4], normalised -> (boxes clipped to [0, 1], bool [N] kept: positive area)."""
    boxes = tf.clip_by_value(tf.cast(boxes, tf.float32), 0.0, 1.0)
    return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def canonical(image, boxes_yxyx, labels, difficult, image_id):
    """Builds a canonical example from TFDS-style fields; clips boxes, drops degenerate ones.

    Object fields of unequal length (a damaged record; TFDS's random mock data does this too)
    are cut to their common length rather than failing.
    """
    count = tf.reduce_min([tf.shape(boxes_yxyx)[0], tf.shape(labels)[0], tf.shape(difficult)[0]])
    boxes, keep = clip_and_keep(tf.gather(tf.cast(boxes_yxyx[:count], tf.float32), [1, 0, 3, 2], axis=-1))
    return {
        "image": image if image.dtype == tf.string else tf.cast(image, tf.uint8),  # string: still encoded
        "boxes": tf.boolean_mask(boxes, keep),
        "labels": tf.boolean_mask(tf.cast(labels[:count], tf.int32) + 1, keep),
        "difficult": tf.boolean_mask(tf.cast(difficult[:count], tf.bool), keep),
        "image_id": tf.cast(image_id, tf.int64),
    }


def image_id_from_filename(filename):
    """VOC ids from file names: '000005.jpg' -> 5, '2008_000123.jpg' -> 2008000123; a name
    without digits gets a hash of itself."""
    digits = tf.strings.substr(tf.strings.regex_replace(filename, r"[^0-9]", ""), 0, 18)
    return tf.cond(tf.strings.length(digits) > 0,
                   lambda: tf.strings.to_number(digits, tf.int64),
                   lambda: tf.strings.to_hash_bucket_fast(filename, 2**62))


def drop_difficult(example):
    keep = tf.logical_not(example["difficult"])
    return {**example, **{k: tf.boolean_mask(example[k], keep) for k in ("boxes", "labels", "difficult")}}


def orient(image, orientation):
    """Turns decoded pixels [H, W, 3] upright as EXIF ``orientation`` (int32 [], 1..8) says,
    as ``PIL.ImageOps.exif_transpose`` does."""
    branches = [
        lambda: image,  # 0: not an orientation
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2
        lambda: tf.image.rot90(image, 2),  # 3
        lambda: tf.image.flip_up_down(image),  # 4
        lambda: tf.image.transpose(image),  # 5
        lambda: tf.image.rot90(image, 3),  # 6: 90 degrees clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), 2),  # 7
        lambda: tf.image.rot90(image, 1),  # 8: 90 degrees counter-clockwise
    ]
    return tf.switch_case(tf.clip_by_value(tf.cast(orientation, tf.int32), 0, 8), branches)


@dataclasses.dataclass(frozen=True)
class IndexedSplit:
    """Random access to a split: ``read(index)`` (int64 [] tensor, 0 <= index < size) -> its
    canonical example, the image still encoded (with 'orientation' where the source has one).

    Sources whose records are fetched in Python (TFDS ArrayRecord) also give ``fetch_many``
    (indices [n] -> serialized records [n], one Python call for many) and ``parse`` (a serialized
    record -> its canonical example, in the graph): the pipelines then fetch a batch at a time.
    """

    size: int
    read: Callable
    fetch_many: Callable | None = None
    parse: Callable | None = None


def indexed_dataset(split: IndexedSplit, *, decode: bool = True, process_index: int = 0,
                    process_count: int = 1) -> tf.data.Dataset:
    """The examples of an indexed split in index order (process p of P: indices p, p + P, ...),
    read in parallel; decoded and turned upright unless ``decode`` is False."""

    def load_parsed(example):
        if decode:
            image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
            image = orient(image, example["orientation"]) if "orientation" in example else image
            example = {key: value for key, value in example.items() if key != "orientation"}
            example["image"] = image
        return example

    indices = tf.data.Dataset.range(split.size).shard(process_count, process_index)
    if split.fetch_many is not None:  # records fetched a batch at a time, parsed one by one in the graph
        ds = indices.batch(64).map(split.fetch_many, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()
        ds = ds.map(lambda record: load_parsed(split.parse(record)), num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        ds = indices.map(lambda index: load_parsed(split.read(index)), num_parallel_calls=AUTOTUNE,
                         deterministic=True)
    return ds.ignore_errors(log_warning=True)  # a file damaged after indexing: skipped, said in the log
