"""The TFDS data sets: VOC07+12, COCO 2017 and the built-in synthetic shapes, each described once
(``DATASETS``) and registered as a data source (``sources``) reading ``data_dir``.

VOC and COCO must be prepared once where there is internet (``tfds build ...``); the shapes are
generated here, offline, on first use. Stored as ArrayRecord (the shapes; VOC/COCO when prepared
with ``--file_format=array_record``) they have random access: the same global batches whatever
the number of processes. As TFRecord they are read in order, each process its own files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from absl import logging

from ssd_jax.classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, SHAPES_CLASS_NAMES, VOC_CLASS_NAMES
from ssd_jax.data import sources
from ssd_jax.data.sources import DatasetNotPreparedError

if TYPE_CHECKING:  # TensorFlow is imported when a data set is read, not when the sources are registered
    import tensorflow as tf

    from ssd_jax.data.canonical import IndexedSplit


def from_voc_like(example):
    """TFDS ``voc`` and ``shapes`` examples -> canonical."""
    from ssd_jax.data.canonical import canonical, image_id_from_filename

    objects = example["objects"]
    image_id = example["image/id"] if "image/id" in example else image_id_from_filename(example["image/filename"])
    return canonical(example["image"], objects["bbox"], objects["label"], objects["is_difficult"], image_id)


def from_coco(example):
    """TFDS ``coco`` examples -> canonical; crowd regions become ``difficult`` (ignored in VOC AP).

    For training, drop them with ``drop_difficult``.
    """
    from ssd_jax.data.canonical import canonical

    objects = example["objects"]
    return canonical(example["image"], objects["bbox"], objects["label"], objects["is_crowd"], example["image/id"])


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


def _open_tfds(name: str, *, data_dir=None, class_names=()) -> sources.Source:
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
    return sources.Source(name=name, class_names=spec.class_names, examples_fn=examples, category_ids=spec.category_ids,
                  train_on_difficult=spec.train_on_difficult, voc_iou=spec.voc_iou,
                  where=f"TFDS {parts['train']} (training), {parts['eval']} (evaluation) in "
                        f"{data_dir or 'the default TFDS data directory'}", indexed_fn=indexed,
                  prepare=prepare if spec.generated else (lambda: None))


def _builder(name: str, data_dir: str | None, *, generated: bool):
    import tensorflow_datasets as tfds

    if generated:
        from ssd_jax.data.shapes import builder  # noqa: F401  (registers the builder with TFDS)
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

    import tensorflow as tf
    import tensorflow_datasets as tfds
    from array_record.python import array_record_data_source

    from ssd_jax.data.canonical import IndexedSplit

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

    from ssd_jax.data.canonical import AUTOTUNE, drop_difficult, indexed_dataset

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


def _register(name: str) -> None:
    spec = DATASETS[name]
    help_ = "TFDS data directory (default: TFDS's own)"
    sources.register(sources.DataSource(
        name=name, fields={"data_dir": sources.Field(help=help_ + ", or the folder of a VOC data set (vocdir)")},
        open=lambda *, data_dir=None, class_names=(): _open_tfds(name, data_dir=data_dir, class_names=class_names),
        description=("generated offline on first use" if spec.generated else "TFDS, prepared with tfds build")))


for _name in DATASETS:
    _register(_name)
