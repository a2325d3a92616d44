"""Readers for data already on disk: a VOCdevkit directory and a COCO json with its images.

Both yield canonical examples (see ``pipeline``), so the same training and evaluation
pipelines apply. Corrupt images and malformed annotations are skipped and counted (``stats``),
never a crash; a missing directory or file fails at once with a clear message.
"""

from __future__ import annotations

import collections
import json
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import tensorflow as tf
from absl import logging

from ssd_jax import image_io
from ssd_jax.classes import VOC_CLASS_NAMES
from ssd_jax.data import pipeline

CANONICAL_SIGNATURE = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "labels": tf.TensorSpec([None], tf.int32),
    "difficult": tf.TensorSpec([None], tf.bool),
    "image_id": tf.TensorSpec([], tf.int64),
}


class SkipStats(collections.Counter):
    """Counts of what a reader skipped: 'corrupt_images', 'bad_annotations', 'bad_boxes'."""


def _require(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def read_image(path: str) -> np.ndarray:
    """Decodes an image file to uint8 RGB [H, W, 3] as stored; raises ``OSError`` if it is corrupt.

    No EXIF rotation (unlike ``ssd_jax.image_io.read_image``'s default): the annotations index the
    stored pixels, as in the TFDS copies of these data sets.
    """
    return image_io.read_image(path, exif_orientation=False)


def _canonical(image, boxes_xyxy_pixels, labels, difficult, image_id, stats: SkipStats):
    """Normalises pixel boxes, clips them and drops degenerate ones (counted): the pipeline's rule."""
    height, width = image.shape[:2]
    boxes = np.asarray(boxes_xyxy_pixels, np.float32).reshape(-1, 4) / np.array([width, height, width, height],
                                                                               np.float32)
    boxes, good = (np.asarray(t) for t in pipeline.clip_and_keep(boxes))
    stats["bad_boxes"] += int(np.sum(~good))
    return {
        "image": image,
        "boxes": boxes[good],
        "labels": np.asarray(labels, np.int32)[good],
        "difficult": np.asarray(difficult, bool)[good],
        "image_id": np.int64(image_id),
    }


# ----------------------------------------------------------------------------- VOCdevkit
def parse_voc_annotation(path: str, class_names=VOC_CLASS_NAMES):
    """A VOC XML file -> (boxes [N, 4] xyxy pixels, labels [N] 1..20, difficult [N]).

    The corners stay as the XML gives them (1-based, inclusive pixel ranges), as TFDS's VOC keeps
    them, so that both sources give the same boxes and the VOC metric scores them with the devkit's
    inclusive IoU (``DatasetSpec.voc_iou``). Raises ``ValueError`` on a malformed file or unknown class.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{path}: not valid XML ({error})") from error
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_names:
            raise ValueError(f"{path}: unknown class {name!r}")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: object {name!r} has no bndbox")
        try:
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: object {name!r} has a malformed bndbox") from error
        boxes.append((x0, y0, x1, y1))
        labels.append(class_names.index(name) + 1)
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32), np.asarray(difficult, bool)


def voc_examples(root: str, year: str = "2007", image_set: str = "trainval", stats: SkipStats | None = None):
    """Yields canonical examples of ``root``/VOC{year} for the ids in ImageSets/Main/{image_set}.txt."""
    stats = SkipStats() if stats is None else stats
    base = os.path.join(root, f"VOC{year}")
    _require(base, "VOCdevkit year directory")
    list_file = os.path.join(base, "ImageSets", "Main", f"{image_set}.txt")
    _require(list_file, "VOC image set list")
    with open(list_file) as f:
        ids = [line.strip().split()[0] for line in f if line.strip()]
    for image_name in ids:
        try:
            boxes, labels, difficult = parse_voc_annotation(os.path.join(base, "Annotations", f"{image_name}.xml"))
        except (OSError, ValueError) as error:
            stats["bad_annotations"] += 1
            logging.warning("skipping %s: %s", image_name, error)
            continue
        try:
            image = read_image(os.path.join(base, "JPEGImages", f"{image_name}.jpg"))
        except OSError as error:
            stats["corrupt_images"] += 1
            logging.warning("skipping %s: unreadable image (%s)", image_name, error)
            continue
        image_id = int(pipeline.image_id_from_filename(tf.constant(image_name)))
        yield _canonical(image, boxes, labels, difficult, image_id, stats)


# ----------------------------------------------------------------------------- COCO json
def coco_examples(annotation_file: str, image_dir: str, stats: SkipStats | None = None,
                  category_ids: list[int] | None = None):
    """Yields canonical examples of a COCO-format json; categories map to 1..K in id order.

    Crowd annotations become ``difficult``. ``category_ids`` (sorted COCO ids) fixes the
    mapping; by default it is the sorted ids of the file's categories.
    """
    stats = SkipStats() if stats is None else stats
    _require(annotation_file, "COCO annotation file")
    _require(image_dir, "COCO image directory")
    with open(annotation_file) as f:
        data = json.load(f)
    category_ids = sorted(c["id"] for c in data.get("categories", [])) if category_ids is None else category_ids
    contiguous = {cat: k + 1 for k, cat in enumerate(category_ids)}
    by_image = collections.defaultdict(list)
    for ann in data.get("annotations", []):
        by_image[ann.get("image_id")].append(ann)
    for info in data.get("images", []):
        boxes, labels, crowd = [], [], []
        for ann in by_image.get(info["id"], []):
            bbox = ann.get("bbox")
            if (not isinstance(bbox, list) or len(bbox) != 4 or ann.get("category_id") not in contiguous
                    or not all(isinstance(v, int | float) for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0):
                stats["bad_annotations"] += 1
                continue
            x, y, w, h = bbox
            boxes.append((x, y, x + w, y + h))
            labels.append(contiguous[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        try:
            image = read_image(os.path.join(image_dir, info["file_name"]))
        except OSError as error:
            stats["corrupt_images"] += 1
            logging.warning("skipping %s: unreadable image (%s)", info.get("file_name"), error)
            continue
        yield _canonical(image, boxes, labels, crowd, info["id"], stats)


def as_dataset(examples_fn, *args, **kwargs) -> tf.data.Dataset:
    """A tf.data source of canonical examples from one of the generators above.

    The generator is re-run for every pass (e.g. every training epoch).
    """
    return tf.data.Dataset.from_generator(lambda: examples_fn(*args, **kwargs),
                                          output_signature=CANONICAL_SIGNATURE)
