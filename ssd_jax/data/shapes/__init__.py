"""The built-in synthetic detection data set "shapes": coloured shapes on textured backgrounds,
exact boxes, five classes.

Three views of the same generator: ``generate_example(rng)`` draws one sample with numpy and
Pillow (``generate``); ``Shapes`` is a TFDS builder (``builder``, registered with TFDS when it is
imported: by ``tfds_sources``, or on first use of ``Shapes`` or ``prepare`` here);
``write_voc_folder`` and ``write_coco_json`` write it as files (``files``). Only the builder
imports TensorFlow.
"""

import importlib

from ssd_jax.data.shapes.files import (
    FILE_CATEGORY_IDS,
    MARKER,
    file_example,
    file_example_rng,
    held_out_numbers,
    write_coco_json,
    write_voc_folder,
)
from ssd_jax.data.shapes.generate import (
    CLASS_NAMES,
    MAX_SHAPES,
    MIN_VISIBLE,
    SPLIT_SEEDS,
    compose,
    encode_jpeg,
    example_rng,
    generate_example,
    polygon_box,
    rasterise,
)

_BUILDER_NAMES = ("Shapes", "ShapesConfig", "prepare")


def __getattr__(name):
    if name in _BUILDER_NAMES:
        return getattr(importlib.import_module("ssd_jax.data.shapes.builder"), name)
    raise AttributeError(f"module 'ssd_jax.data.shapes' has no attribute {name!r}")


__all__ = ["CLASS_NAMES", "FILE_CATEGORY_IDS", "MARKER", "MAX_SHAPES", "MIN_VISIBLE", "SPLIT_SEEDS", "Shapes",
           "ShapesConfig", "compose", "encode_jpeg", "example_rng", "file_example", "file_example_rng",
           "generate_example", "held_out_numbers", "polygon_box", "prepare", "rasterise", "write_coco_json",
           "write_voc_folder"]
