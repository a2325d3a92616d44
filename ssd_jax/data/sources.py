"""Data sources: one reader plus one registry entry each.

A ``DataSource`` declares its name (the training config's ``dataset``), the config fields it
reads with their defaults and help, a check of their values, and ``open(**fields,
class_names=...)`` -> ``Source``: the data set opened for reading (its class names, its
canonical examples per split, random access where it has it). The training config, its checks,
``experiments/train.py --dataset``, ``evaluate.py`` and ``show_batch.py`` read the registry;
adding a source is its reader module plus ``register``::

    sources.register(sources.DataSource(
        name="my_data", fields={"my_root": sources.Field(help="folder of my data")},
        check=lambda values: [] if values["my_root"] else ["my_root=None: my_data reads this folder"],
        open=lambda *, my_root, class_names=(): sources.indexed_source("my_data", ...)))

Built in: the TFDS data sets (``tfds_sources``: voc, coco, shapes, shapes_tiny), a VOC folder
(``vocdir``) and a COCO json (``cocojson``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # TensorFlow is imported by the readers, not by the registry
    import tensorflow as tf

    from ssd_jax.data.canonical import IndexedSplit


class DatasetNotPreparedError(FileNotFoundError):
    """A data set that is not on disk yet (a TFDS one never built); the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class Field:
    """A training-config field that a source reads: its default (None: a path, unset) and help."""

    default: Any = None
    help: str = ""


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One kind of data set (see the module docstring)."""

    name: str
    open: Callable[..., Source]
    fields: Mapping[str, Field] = dataclasses.field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], list[str]] = lambda values: []
    description: str = ""
    # Whether its classes come from the data (a folder's object names, a json's categories), so that
    # class_names may choose them; a fixed data set (TFDS VOC) has its own.
    classes_from_data: bool = False


_REGISTRY: dict[str, DataSource] = {}


def register(source: DataSource) -> DataSource:
    """Makes ``source`` known by its name. A field it shares with another source (``data_dir``)
    must have the same default."""
    for name, field in source.fields.items():
        for other in _REGISTRY.values():
            if other.name != source.name and name in other.fields and other.fields[name].default != field.default:
                raise ValueError(f"source {source.name!r}: field {name!r} has default {field.default!r}, but source "
                                 f"{other.name!r} gives it {other.fields[name].default!r}")
    _REGISTRY[source.name] = source
    return source


def unregister(name: str) -> None:
    """Forgets the source ``name`` (a plug-in's teardown); its fields leave the training config."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered sources, sorted."""
    _load_builtins()
    return tuple(sorted(_REGISTRY))


def get(name: str) -> DataSource:
    """The source ``name``; ``ValueError`` naming the known ones otherwise."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(names())}")
    return _REGISTRY[name]


def all_fields() -> dict[str, Field]:
    """Every config field of every registered source (one entry per name)."""
    _load_builtins()
    return {name: field for source in _REGISTRY.values() for name, field in source.fields.items()}


def describe() -> str:
    """One line naming every registered source and what it is (for a --dataset flag's help)."""
    return "; ".join(f"{name}: {get(name).description}" for name in names())


def _load_builtins() -> None:
    from ssd_jax.data import cocojson, tfds_sources, vocdir  # noqa: F401  (each registers its sources)


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
        """Canonical examples of split 'train' or 'eval': with several processes each reads its own
        part; ``decode=False`` leaves images encoded for the training pipeline to decode after
        skipping (resuming far into a run then decodes nothing it skips)."""
        return self.examples_fn(split, process_index=process_index, process_count=process_count,
                                shuffle_files=shuffle_files, decode=decode)

    def indexed(self, split: str) -> IndexedSplit | None:
        """Random access to ``split``, or None where the data is only read in order (TFRecord)."""
        return self.indexed_fn(split)


def indexed_source(name: str, class_names, splits: Mapping[str, IndexedSplit], *, where: str, skipped: str = "",
                   num_objects: Mapping[str, int] | None = None, **fields) -> Source:
    """A ``Source`` over splits with random access ({'train' and/or 'eval': IndexedSplit}).

    Raises ``ValueError`` for a split without images or (given ``num_objects``) without objects.
    """
    from ssd_jax.data.canonical import indexed_dataset

    for split, what in (("train", "training"), ("eval", "evaluation")):
        if split not in splits:
            continue
        if not splits[split].size:
            raise ValueError(f"the {what} split of {where} has no images{'' if not skipped else ' (' + skipped + ')'}")
        if num_objects is not None and not num_objects[split]:
            raise ValueError(f"the {what} split of {where} has no objects of the classes {list(class_names)}")

    def examples(split, *, process_index=0, process_count=1, shuffle_files=False, decode=True):
        del shuffle_files  # the training pipelines shuffle
        if split not in splits:
            raise ValueError(f"{name} was opened without its {split} split")
        return indexed_dataset(splits[split], decode=decode, process_index=process_index, process_count=process_count)

    return Source(name=name, class_names=tuple(class_names), examples_fn=examples, where=where, skipped=skipped,
                  indexed_fn=lambda split: splits.get(split), **fields)


def open_source(name: str, **options) -> Source:
    """Opens data set ``name`` (a registered source): ``options`` are its config fields (others
    are ignored, so a training config's whole set may be passed) and ``class_names`` (on disk:
    fixes the classes and their order). Raises ``ValueError`` or ``FileNotFoundError`` naming
    what is missing."""
    source = get(name)
    given = {key: options.get(key, field.default) for key, field in source.fields.items()}
    return source.open(**given, class_names=tuple(options.get("class_names") or ()))


def source_options(config) -> dict:
    """The ``open_source`` options of a training config: its source's fields and class_names."""
    names_ = config.get("class_names") or ()
    if isinstance(names_, str):
        names_ = tuple(name.strip() for name in names_.split(",") if name.strip())
    fields = get(config.get("dataset")).fields
    return {**{key: config.get(key, field.default) for key, field in fields.items()}, "class_names": tuple(names_)}
