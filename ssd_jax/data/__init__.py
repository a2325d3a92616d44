"""Data: the sources of labelled images (``sources``: a registry; TFDS VOC / COCO / the built-in
shapes in ``tfds_sources``, your own VOC folder in ``vocdir`` and COCO json in ``cocojson``),
the canonical example they all yield (``canonical``), the tf.data pipelines that batch it
(``pipeline``) with SSD's augmentation (``augment``), and the synthetic shapes (``shapes``).
Importing this package does not import TensorFlow; the readers and pipelines do."""

from ssd_jax.data.sources import DatasetNotPreparedError, DataSource, Field, Source, open_source, register

__all__ = ["DataSource", "DatasetNotPreparedError", "Field", "Source", "open_source", "register"]
