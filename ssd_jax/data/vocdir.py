"""A folder in VOC layout, or a whole VOCdevkit: the ``vocdir`` data source.

``Annotations/*.xml``, ``JPEGImages/`` and ``ImageSets/Main/trainval.txt`` and ``test.txt``; a
VOCdevkit (``VOC2007/``, ``VOC2012/``) gives 07+12 trainval for training and 07 test for
evaluation, the paper's setup; a folder without split files keeps every 10th image (by file
name) for evaluation. Class names are the object names found, sorted, unless given. Boxes stay
the XML's inclusive pixel corners (as TFDS's VOC keeps them); the VOC metric scores them with the
devkit's "+1" IoU. Faults are counted (``index.SkipStats``).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

import numpy as np
from absl import logging

from ssd_jax.data import sources
from ssd_jax.data.index import ImageIndex, SkipStats, require, upright_header

EVAL_EVERY = 10  # without split files, every 10th image by file name is for evaluation


def parse_voc_annotation(path: str) -> tuple[list[tuple[str, tuple, bool]], tuple[int, int] | None, list[str]]:
    """A VOC XML file -> ([(object name, (xmin, ymin, xmax, ymax) pixels, difficult)], (width, height)
    or None, [what is wrong with each object left out: no name, no or a malformed bndbox]).

    The corners stay as the XML gives them (1-based, inclusive pixel ranges), as TFDS's VOC keeps
    them, so that both sources give the same boxes and the VOC metric scores them with the
    devkit's inclusive IoU. Raises ``ValueError`` when the file is not XML at all.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"not valid XML ({error})") from error
    objects, problems = [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            problems.append(f"object {number} ({name or 'no name'}) has {'no bndbox' if name else 'no name'}")
            continue
        try:
            corners = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            problems.append(f"object {number} ({name}) has a malformed bndbox")
            continue
        objects.append((name, corners, (obj.findtext("difficult") or "0").strip() == "1"))
    try:
        size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
    except (TypeError, ValueError):
        size = None
    return objects, size, problems


def voc_splits(root: str) -> tuple[dict[str, list[tuple[str, str]]], str]:
    """The (folder, image stem) of each split of a VOC folder -> ({'train': [...], 'eval': [...]}, how).

    ``root`` is a VOCdevkit (VOC2007/ and VOC2012/ inside: 07+12 trainval for training, 07 test
    for evaluation, the paper's setup) or one folder in VOC layout, with ImageSets/Main/
    trainval.txt and test.txt, or without them: every 10th image by file name for evaluation.
    """
    require(root, "VOC folder (--config.data_dir)")
    years = [y for y in ("VOC2007", "VOC2012") if os.path.isdir(os.path.join(root, y))]
    if years:
        train = [(os.path.join(root, y), stem) for y in years
                 for stem in _split_file(os.path.join(root, y, "ImageSets", "Main", "trainval.txt"))]
        eval_ = [(os.path.join(root, "VOC2007"), stem)
                 for stem in _split_file(os.path.join(root, "VOC2007", "ImageSets", "Main", "test.txt"))]
        return {"train": train, "eval": eval_}, f"VOCdevkit {root}: {' + '.join(years)} trainval, VOC2007 test"
    require(os.path.join(root, "Annotations"), "VOC Annotations folder (Annotations/*.xml)")
    require(os.path.join(root, "JPEGImages"), "VOC image folder (JPEGImages/)")
    main = os.path.join(root, "ImageSets", "Main")
    if os.path.exists(os.path.join(main, "trainval.txt")) and os.path.exists(os.path.join(main, "test.txt")):
        return ({"train": [(root, s) for s in _split_file(os.path.join(main, "trainval.txt"))],
                 "eval": [(root, s) for s in _split_file(os.path.join(main, "test.txt"))]},
                f"{root}: ImageSets/Main/trainval.txt and test.txt")
    stems = sorted(os.path.splitext(name)[0] for name in os.listdir(os.path.join(root, "Annotations"))
                   if name.endswith(".xml"))
    eval_stems = set(stems[EVAL_EVERY - 1::EVAL_EVERY])
    return ({"train": [(root, s) for s in stems if s not in eval_stems], "eval": [(root, s) for s in stems
                                                                                if s in eval_stems]},
            f"{root}: no ImageSets/Main split files, so every {EVAL_EVERY}th image by file name is for evaluation")


def _split_file(path: str) -> list[str]:
    require(path, "VOC split file")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def _image_path(folder: str, stem: str) -> str:
    for extension in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"):
        path = os.path.join(folder, "JPEGImages", stem + extension)
        if os.path.exists(path):
            return path
    return os.path.join(folder, "JPEGImages", stem + ".jpg")


def open_voc_folder(root: str, class_names=None) -> tuple[tuple[str, ...], dict[str, ImageIndex], SkipStats, str]:
    """Indexes a VOC folder -> (class names, {'train', 'eval': ImageIndex}, what was skipped, how it was split).

    Class names are the object names found in the annotations, sorted, unless ``class_names``
    fixes them (their order, and which: objects of other names are skipped and counted).
    """
    import tensorflow as tf

    from ssd_jax.data.canonical import image_id_from_filename

    splits, how = voc_splits(root)
    stats = SkipStats()
    parsed = {}
    for split, items in splits.items():
        parsed[split] = []
        for folder, stem in items:
            xml_path = os.path.join(folder, "Annotations", stem + ".xml")
            try:
                objects, size, problems = parse_voc_annotation(xml_path)
            except (OSError, ValueError) as error:
                stats.record("malformed_annotations", xml_path, f"{error}; its image is left out")
                continue
            for problem in problems:  # the object is left out, the image and its other objects kept
                stats.record("malformed_objects", xml_path, problem)
            if problems and not objects:
                logging.warning("skipped the image of %s: none of its objects is well formed", xml_path)
                continue
            parsed[split].append((folder, stem, objects, size))
    names = tuple(class_names) if class_names else tuple(sorted({name for items in parsed.values()
                                                                 for *_, objects, _ in items
                                                                 for name, _, _ in objects}))
    ids = {name: k + 1 for k, name in enumerate(names)}
    indexes = {}
    for split, items in parsed.items():
        index = ImageIndex()
        for folder, stem, objects, size in items:
            path = _image_path(folder, stem)
            header = upright_header(path, size, stats)
            if header is None:
                continue
            width, height, orientation = header
            kept = [(ids[name], corners, difficult) for name, corners, difficult in objects if name in ids]
            stats["other_classes"] += len(objects) - len(kept)
            boxes = np.asarray([corners for _, corners, _ in kept], np.float32).reshape(-1, 4)
            index.add(path, boxes / np.asarray([width, height, width, height], np.float32),
                      [label for label, _, _ in kept], [d for _, _, d in kept],
                      int(image_id_from_filename(tf.constant(stem))), orientation)
        index.clip_boxes(stats)
        indexes[split] = index
    return names, indexes, stats, how


def _open(*, data_dir=None, class_names=()) -> sources.Source:
    if not data_dir:
        raise ValueError("the vocdir data set reads a VOC folder: set data_dir (--config.data_dir=DIR)")
    names, indexes, stats, how = open_voc_folder(data_dir, class_names or None)
    return sources.indexed_source("vocdir", names, {split: index.indexed() for split, index in indexes.items()},
                                  where=how, skipped=stats.summary(),
                                  num_objects={split: index.num_objects for split, index in indexes.items()},
                                  voc_iou="devkit")


sources.register(sources.DataSource(
    name="vocdir", open=_open,
    fields={"data_dir": sources.Field(help="TFDS data directory (default: TFDS's own), or the folder of a VOC data "
                                           "set (vocdir)")},
    check=lambda values: [] if values.get("data_dir") else [
        "data_dir=None: the vocdir data set reads the VOC folder named by data_dir"],
    description="your VOC folder or VOCdevkit", classes_from_data=True))
