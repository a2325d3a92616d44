"""Input pipelines: TFDS VOC / COCO / built-in shapes, local VOCdevkit and COCO json readers,
SSD augmentation. Formats are described in ``ssd_jax.data.pipeline``."""

from ssd_jax.data.pipeline import (
    DATASETS,
    DatasetNotPreparedError,
    as_numpy,
    eval_dataset,
    tfds_source,
    train_dataset,
)

__all__ = [
    "DATASETS",
    "DatasetNotPreparedError",
    "as_numpy",
    "eval_dataset",
    "tfds_source",
    "train_dataset",
]
