"""tf.data pipelines: sources -> canonical examples -> training / evaluation batches.

A *canonical example* is a dict of TF tensors, whatever the source:
  image      uint8 [H, W, 3] RGB
  boxes      float32 [N, 4] (xmin, ymin, xmax, ymax) normalised
  labels     int32 [N], dataset class k -> k + 1 (0 is background)
  difficult  bool [N]
  image_id   int64 []

Training batches (numpy): image uint8 [B, S, S, 3], boxes float32 [B, G, 4], labels int32 [B, G]
(0 = padding), mask bool [B, G], G = the config's max_boxes. Evaluation batches add difficult
[B, G], image_id [B] and original_size [B, 2] (height, width); their images are only resized,
and G is the largest object count of the batch: evaluation never drops ground truth.

A data set is described once, in ``DATASETS``: where its splits come from, how its records
become canonical examples, its class names and the source's own category ids, what training
does with its difficult (VOC) or crowd (COCO) objects, and how its VOC metric measures overlap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from ssd_jax.classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, SHAPES_CLASS_NAMES, VOC_CLASS_NAMES
from ssd_jax.data import augment

AUTOTUNE = tf.data.AUTOTUNE


# ----------------------------------------------------------------------------- canonical form
# The rules every source follows (TFDS here, ssd_jax.data.local for files on disk):
# - a box is clipped to the image, then kept if it still has a positive width and height;
# - an image's id is the number in its file name ('000005.jpg' -> 5), or a hash of the name.
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


def from_voc_like(example):
    """TFDS ``voc`` and ``shapes`` examples -> canonical."""
    objects = example["objects"]
    image_id = example["image/id"] if "image/id" in example else image_id_from_filename(example["image/filename"])
    return canonical(example["image"], objects["bbox"], objects["label"], objects["is_difficult"], image_id)


def from_coco(example):
    """TFDS ``coco`` examples -> canonical; crowd regions become ``difficult`` (ignored in VOC AP).

    For training, drop them with ``drop_difficult``.
    """
    objects = example["objects"]
    return canonical(example["image"], objects["bbox"], objects["label"], objects["is_crowd"], example["image/id"])


def drop_difficult(example):
    keep = tf.logical_not(example["difficult"])
    return {**example, **{k: tf.boolean_mask(example[k], keep) for k in ("boxes", "labels", "difficult")}}


# ----------------------------------------------------------------------------- data sets
@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipelines, training and evaluation need to know about one data set.

    train, eval: the (TFDS name, split) parts of each split, concatenated.
    adapter: a TFDS record -> a canonical example.
    class_names: the names of classes 1..C-1.
    category_ids: the source's own id of each class (COCO's category ids), for results files in
      the source's terms; None: the class number itself.
    train_on_difficult: whether training keeps the objects marked ``difficult``: VOC's hard
      objects, yes (the reference SSD trains on them); COCO's crowd regions, no.
    voc_iou: the IoU of its VOC metric: "devkit" where boxes are inclusive integer pixel ranges
      (VOC's annotations, kept as they are by TFDS and ssd_jax.data.local), "continuous" for
      continuous corners (the synthetic shapes, COCO).
    generated: built here, offline, the first time it is used (the synthetic shapes); the others
      must be prepared where there is internet.
    """

    train: tuple[tuple[str, str], ...]
    eval: tuple[tuple[str, str], ...]
    adapter: Callable
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...] | None = None
    train_on_difficult: bool = True
    voc_iou: str = "continuous"
    generated: bool = False

    @property
    def num_classes(self) -> int:
        """Classes with the background."""
        return len(self.class_names) + 1


DATASETS = {
    "voc": DatasetSpec(train=(("voc/2007", "train+validation"), ("voc/2012", "train+validation")),
                       eval=(("voc/2007", "test"),), adapter=from_voc_like, class_names=VOC_CLASS_NAMES,
                       voc_iou="devkit"),
    "coco": DatasetSpec(train=(("coco/2017", "train"),), eval=(("coco/2017", "validation"),), adapter=from_coco,
                        class_names=COCO_CLASS_NAMES, category_ids=COCO_CATEGORY_IDS, train_on_difficult=False),
    "shapes": DatasetSpec(train=(("shapes", "train"),), eval=(("shapes", "test"),), adapter=from_voc_like,
                          class_names=SHAPES_CLASS_NAMES, generated=True),
    # 16 / 8 images: for tests and instant demos.
    "shapes_tiny": DatasetSpec(train=(("shapes/tiny", "train"),), eval=(("shapes/tiny", "test"),),
                               adapter=from_voc_like, class_names=SHAPES_CLASS_NAMES, generated=True),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The description of data set ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


# ----------------------------------------------------------------------------- TFDS sources
# ----------------------------------------------------------------------------- opened sources
@dataclasses.dataclass(frozen=True)
class Source:
    """A data set opened for reading: what training and evaluation need to know about it, and
    ``examples(split, ...)``, its canonical examples. ``open_source`` makes one."""

    name: str
    class_names: tuple[str, ...]
    examples_fn: Callable[..., tf.data.Dataset]
    category_ids: tuple[int, ...] | None = None
    train_on_difficult: bool = True
    voc_iou: str = "continuous"
    skipped: str = ""  # what reading the annotations skipped, e.g. 'skipped: 1 unreadable image'
    where: str = ""  # where the splits come from, for messages
    indexed_fn: Callable[[str], IndexedSplit | None] = lambda split: None
    prepare: Callable[[], None] = lambda: None  # builds generated data (once, before other processes read it)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def examples(self, split: str, *, process_index: int = 0, process_count: int = 1, shuffle_files: bool = False,
                 decode: bool = True) -> tf.data.Dataset:
        """Canonical examples of split 'train' or 'eval' (see ``tfds_source`` for the options)."""
        return self.examples_fn(split, process_index=process_index, process_count=process_count,
                                shuffle_files=shuffle_files, decode=decode)

    def indexed(self, split: str) -> IndexedSplit | None:
        """Random access to ``split``, or None where the data is only read in order (TFRecord)."""
        return self.indexed_fn(split)


def _open_tfds(name: str, *, data_dir=None, class_names=None, **unused) -> Source:
    del unused
    spec = dataset_spec(name)
    if class_names and tuple(class_names) != spec.class_names:
        raise ValueError(f"{name} has its own class names {list(spec.class_names)}; class_names applies to the "
                         f"vocdir and cocojson data sets")

    def examples(split, **options):
        return tfds_source(name, split, data_dir=data_dir, **options)

    def indexed(split):
        return _tfds_indexed(getattr(spec, split), data_dir, spec.adapter, generated=spec.generated)

    def prepare():
        for tfds_name, _ in spec.train + spec.eval:
            _builder(tfds_name, data_dir, generated=spec.generated)

    parts = {split: ", ".join(f"{tfds_name} split {tfds_split!r}" for tfds_name, tfds_split in getattr(spec, split))
             for split in ("train", "eval")}
    return Source(name=name, class_names=spec.class_names, examples_fn=examples, category_ids=spec.category_ids,
                  train_on_difficult=spec.train_on_difficult, voc_iou=spec.voc_iou,
                  where=f"TFDS {parts['train']} (training), {parts['eval']} (evaluation) in "
                        f"{data_dir or 'the default TFDS data directory'}", indexed_fn=indexed,
                  prepare=prepare if spec.generated else (lambda: None))


def _indexed_source(name, class_names, indexes, *, where, skipped, **fields) -> Source:
    for split, what in (("train", "training"), ("eval", "evaluation")):
        if split not in indexes:
            continue
        if not len(indexes[split]):
            raise ValueError(f"the {what} split of {where} has no images{'' if not skipped else ' (' + skipped + ')'}")
        if not indexes[split].num_objects:
            raise ValueError(f"the {what} split of {where} has no objects of the classes {list(class_names)}")

    def examples(split, *, process_index=0, process_count=1, shuffle_files=False, decode=True):
        del shuffle_files  # train_dataset shuffles
        if split not in indexes:
            raise ValueError(f"{name} was opened without its {split} split")
        return indexes[split].dataset(decode=decode, process_index=process_index, process_count=process_count)

    def indexed(split):
        return indexes[split].indexed() if split in indexes else None

    return Source(name=name, class_names=tuple(class_names), examples_fn=examples, where=where, skipped=skipped,
                  indexed_fn=indexed, **fields)


def _open_voc_folder(name: str, *, data_dir=None, class_names=None, **unused) -> Source:
    del unused
    from ssd_jax.data import local

    if not data_dir:
        raise ValueError("the vocdir data set reads a VOC folder: set data_dir (--config.data_dir=DIR)")
    names, indexes, stats, how = local.open_voc_folder(data_dir, class_names)
    return _indexed_source(name, names, indexes, where=how, skipped=stats.summary(), voc_iou="devkit")


def _open_coco_json(name: str, *, train_annotations=None, train_images=None, eval_annotations=None,
                    eval_images=None, class_names=None, **unused) -> Source:
    del unused
    from ssd_jax.data import local

    paths = {"train_annotations": train_annotations, "train_images": train_images,
             "eval_annotations": eval_annotations, "eval_images": eval_images}
    splits = [split for split in ("train", "eval") if paths[f"{split}_annotations"] or paths[f"{split}_images"]]
    missing = [key for key, value in paths.items() if not value and key.split("_")[0] in splits]
    if missing or not splits:
        missing = missing or list(paths)
        raise ValueError(f"the cocojson data set needs {', '.join(missing)} (--config.{missing[0]}=PATH, ...)")
    names, category_ids, indexes, stats = local.open_coco_json(
        {split: paths[f"{split}_annotations"] for split in splits},
        {split: paths[f"{split}_images"] for split in splits}, class_names)
    where = " and ".join(paths[f"{split}_annotations"] for split in splits)
    return _indexed_source(name, names, indexes, where=where,
                           skipped=stats.summary(), category_ids=category_ids, train_on_difficult=False)


# Data sets on disk that are not TFDS builders: one reader (ssd_jax.data.local) and one entry each.
LOCAL_FORMATS = {"vocdir": _open_voc_folder, "cocojson": _open_coco_json}
DATASET_NAMES = tuple(sorted(DATASETS) + sorted(LOCAL_FORMATS))


def open_source(name: str, **options) -> Source:
    """Opens data set ``name`` (a TFDS one of ``DATASETS``, or 'vocdir' / 'cocojson' on disk).

    options: data_dir (TFDS data directory, or the VOC folder for 'vocdir'); train_annotations,
    train_images, eval_annotations, eval_images ('cocojson'); class_names (on disk: fixes the
    classes and their order). Raises ``ValueError`` or ``FileNotFoundError`` naming what is missing.
    """
    if name in LOCAL_FORMATS:
        return LOCAL_FORMATS[name](name, **options)
    if name in DATASETS:
        return _open_tfds(name, **options)
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASET_NAMES)}")


def source_options(config) -> dict:
    """The ``open_source`` options of a training config."""
    names = config.get("class_names") or ()
    if isinstance(names, str):
        names = tuple(name.strip() for name in names.split(",") if name.strip())
    return {"data_dir": config.get("data_dir"), "train_annotations": config.get("train_annotations"),
            "train_images": config.get("train_images"), "eval_annotations": config.get("eval_annotations"),
            "eval_images": config.get("eval_images"), "class_names": tuple(names)}


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS data set that is not on disk; the message says how to prepare it."""


def _builder(name: str, data_dir: str | None, *, generated: bool):
    import tensorflow_datasets as tfds

    if generated:
        from ssd_jax.data import shapes  # noqa: F401  (registers the builder with TFDS)
    builder = tfds.builder(name, data_dir=data_dir)
    if generated and not builder.is_prepared():  # in ArrayRecord files: random access for the global order
        logging.info("generating the %s data set (offline, seconds)", name)
        builder.download_and_prepare(file_format=tfds.core.FileFormat.ARRAY_RECORD)
    return builder


def _tfds_indexed(parts, data_dir, adapter, *, generated: bool) -> IndexedSplit | None:
    """Random access to TFDS splits stored as ArrayRecord (None for TFRecord or sliced splits):
    the raw record read in Python (array_record), parsed and adapted in the graph."""
    import bisect
    import threading

    import tensorflow_datasets as tfds
    from array_record.python import array_record_data_source

    readers, offsets, features = [], [0], None
    for name, split in parts:
        builder = _builder(name, data_dir, generated=generated)
        if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
            return None
        for part in split.split("+"):
            if "[" in part or part not in builder.info.splits:
                return None
            info = builder.info.splits[part]
            readers.append(array_record_data_source.ArrayRecordDataSource([str(p) for p in info.filepaths]))
            offsets.append(offsets[-1] + info.num_examples)
        features = features or builder.info.features
    lock = threading.Lock()

    def fetch(indices):
        indices = np.asarray(indices).reshape(-1)
        parts = [bisect.bisect_right(offsets, int(i)) - 1 for i in indices]
        with lock:  # one reader per file set: reads one after another
            return np.asarray([readers[part][int(i) - offsets[part]] for part, i in zip(parts, indices)], object)

    def fetch_many(indices):
        serialized = tf.py_function(fetch, [indices], tf.string)
        serialized.set_shape([None])
        return serialized

    def parse(serialized):
        return adapter(features.deserialize_example(serialized, decoders={"image": tfds.decode.SkipDecoding()}))

    def read(index):
        return parse(tf.reshape(fetch_many(tf.reshape(index, [1])), []))

    return IndexedSplit(size=offsets[-1], read=read, fetch_many=fetch_many, parse=parse)


def _not_prepared(name: str, data_dir: str | None, error: Exception) -> DatasetNotPreparedError:
    where = f" --data_dir={data_dir}" if data_dir else ""
    return DatasetNotPreparedError(
        f"TFDS data set {name!r} is not prepared ({error}). Prepare it once on a machine with internet "
        f"access (`tfds build {name}{where}`; VOC and COCO download several GB) and copy the data directory "
        f"here, or read a local copy with ssd_jax.data.local (VOCdevkit or COCO json).")


def tfds_source(dataset: str, split: str, *, data_dir: str | None = None, shuffle_files: bool = False,
                process_index: int = 0, process_count: int = 1, decode: bool = True) -> tf.data.Dataset:
    """Canonical examples of ``dataset`` (a key of ``DATASETS``) for split 'train' or 'eval'.

    The training split leaves out the objects the data set does not train on (COCO's crowd
    regions: ``DatasetSpec.train_on_difficult``). With several processes each reads its own
    disjoint part (``tfds.split_for_jax_process``). ``decode=False`` leaves images encoded (a
    string tensor) for ``train_dataset`` to decode after skipping, so that resuming far into a
    run does not decode every skipped image.
    """
    import tensorflow_datasets as tfds

    spec = dataset_spec(dataset)
    indexed = _tfds_indexed(getattr(spec, split), data_dir, spec.adapter, generated=spec.generated)
    if indexed is not None:  # ArrayRecord files (the built-in shapes): read through the index
        ds = indexed_dataset(indexed, decode=decode, process_index=process_index, process_count=process_count)
        return ds.map(drop_difficult, num_parallel_calls=AUTOTUNE) if split == "train" and not \
            spec.train_on_difficult else ds
    parts = []
    for name, tfds_split in getattr(spec, split):
        builder = _builder(name, data_dir, generated=spec.generated)
        if process_count > 1:
            tfds_split = tfds.split_for_jax_process(tfds_split, process_index=process_index,
                                                    process_count=process_count)
        read_config = tfds.ReadConfig(shuffle_seed=0) if shuffle_files else None
        try:
            decoders = None if decode else {"image": tfds.decode.SkipDecoding()}
            ds = builder.as_dataset(split=tfds_split, shuffle_files=shuffle_files, read_config=read_config,
                                    decoders=decoders)
        except AssertionError as error:  # what TFDS raises for data that was never prepared
            raise _not_prepared(name, data_dir, error) from error
        ds = ds.map(spec.adapter, num_parallel_calls=AUTOTUNE)
        if split == "train" and not spec.train_on_difficult:
            ds = ds.map(drop_difficult, num_parallel_calls=AUTOTUNE)
        parts.append(ds)
    source = parts[0]
    for part in parts[1:]:
        source = source.concatenate(part)
    return source


# ----------------------------------------------------------------------------- batching
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
            if "orientation" in example:  # a photo with an EXIF orientation (ssd_jax.data.local)
                from ssd_jax.data.local import orient

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
            from ssd_jax.data.local import orient

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
