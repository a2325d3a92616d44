"""Data on disk: a folder in VOC layout (or a VOCdevkit) and a COCO json with its images.

Opening one builds an index: for each image its path, normalised boxes, labels, difficult (or
crowd) flags, id and EXIF orientation, read from the annotation files and the image headers
only. The pipeline then streams the files through tf.data, reading and decoding in parallel as
it goes, so a folder of any size is never decoded up front, and the same augmentation, seeding,
exact resume and per-process split apply as for TFDS data. The index lives in memory (paths
and boxes: some 100 bytes per object) and is built again at each start (about 3,000 VOC
annotations a second).

Faults in the data are skipped and counted, each kind under its own name, with a warning naming
the file and the entry (``SkipStats``): an unreadable or truncated image, a malformed annotation
file or COCO annotation, a malformed VOC object (its image keeps its other objects), a COCO
image entry without id, an annotation of an image or category that is not listed, a box that is
inverted or outside its image, an object of a class left out by ``class_names``.
A missing folder or file, an empty split or a split without objects fail at once, naming the
path and what was expected.

Boxes follow the annotation's frame. Photos with an EXIF orientation are turned upright, and
their boxes are taken as drawn on the upright image, unless the annotation's own image size
(VOC's <size>, COCO's width and height) is that of the stored, unrotated pixels.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from ssd_jax import image_io
from ssd_jax.data import pipeline

CANONICAL_SIGNATURE = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "labels": tf.TensorSpec([None], tf.int32),
    "difficult": tf.TensorSpec([None], tf.bool),
    "image_id": tf.TensorSpec([], tf.int64),
}
EXIF_ORIENTATION_TAG = 0x0112
EVAL_EVERY = 10  # without split files, every 10th image by file name is for evaluation


class SkipStats(collections.Counter):
    """What a reader skipped, by kind (``WORDS``); ``record`` counts one fault and warns about it,
    naming the file and the entry (the first ``WARNINGS_PER_KIND`` of each kind, then a count)."""

    WORDS = {"unreadable_images": ("unreadable image", "unreadable images"),
             "malformed_annotations": ("malformed annotation", "malformed annotations"),
             "malformed_objects": ("malformed object", "malformed objects"),
             "malformed_image_entries": ("malformed image entry", "malformed image entries"),
             "orphan_annotations": ("annotation of no listed image", "annotations of no listed image"),
             "unknown_categories": ("annotation of an unknown category", "annotations of an unknown category"),
             "bad_boxes": ("bad box", "bad boxes"),
             "other_classes": ("object of another class", "objects of other classes")}
    WARNINGS_PER_KIND = 10

    def record(self, kind: str, where: str, what: str) -> None:
        """Counts one fault of ``kind`` at ``where`` (a file, or a file and an entry) and warns."""
        self[kind] += 1
        if self[kind] <= self.WARNINGS_PER_KIND:
            logging.warning("skipped %s in %s: %s", self.WORDS[kind][0], where, what)
        elif self[kind] == self.WARNINGS_PER_KIND + 1:
            logging.warning("more %s skipped; their count is reported at the start", self.WORDS[kind][1])

    def summary(self) -> str:
        """'skipped: 1 unreadable image, 2 bad boxes', or 'skipped: nothing'."""
        parts = [f"{self[key]} {words[0] if self[key] == 1 else words[1]}"
                 for key, words in self.WORDS.items() if self[key]]
        return "skipped: " + (", ".join(parts) if parts else "nothing")


def require(path: str, what: str) -> None:
    """FileNotFoundError naming ``path`` and what was expected there, if it does not exist."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def read_image(path: str) -> np.ndarray:
    """Decodes an image file to uint8 RGB [H, W, 3] as stored (no EXIF rotation); ``OSError`` if corrupt."""
    return image_io.read_image(path, exif_orientation=False)


# ----------------------------------------------------------------------------- images and the index
def image_header(path: str) -> tuple[int, int, int]:
    """(width, height, EXIF orientation 1..8) of a stored image, from its header.

    Raises ``OSError`` for a missing, unreadable or visibly truncated file (a JPEG without its end
    marker, a PNG without IEND): the pipeline would fail on it later.
    """
    with Image.open(path) as image:
        width, height = image.size
        orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
        kind = image.format
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 1024))
        tail = f.read()
    if (kind == "JPEG" and b"\xff\xd9" not in tail) or (kind == "PNG" and b"IEND" not in tail):
        raise OSError(f"{path}: truncated {kind} file")
    return width, height, orientation if 1 <= orientation <= 8 else 1


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation >= 5 else (width, height)


def orientation_to_apply(width: int, height: int, orientation: int, annotated_size) -> int:
    """The EXIF orientation to apply: none when the annotation's size is that of the stored pixels
    and turning them would swap the sides (the boxes were drawn on the stored image)."""
    if orientation >= 5 and annotated_size is not None and tuple(annotated_size) == (width, height) != (height, width):
        return 1
    return orientation


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


@dataclasses.dataclass
class ImageIndex:
    """The images of one split: paths and annotations, no pixels. Boxes are normalised corners."""

    paths: list[str] = dataclasses.field(default_factory=list)
    boxes: list[np.ndarray] = dataclasses.field(default_factory=list)  # [n_i, 4] each
    labels: list[np.ndarray] = dataclasses.field(default_factory=list)  # [n_i] 1..C-1
    difficult: list[np.ndarray] = dataclasses.field(default_factory=list)  # [n_i]
    image_ids: list[int] = dataclasses.field(default_factory=list)
    orientations: list[int] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_objects(self) -> int:
        return int(sum(len(labels) for labels in self.labels))

    def add(self, path, boxes, labels, difficult, image_id, orientation) -> None:
        self.paths.append(path)
        self.boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        self.labels.append(np.asarray(labels, np.int32))
        self.difficult.append(np.asarray(difficult, bool))
        self.image_ids.append(int(image_id))
        self.orientations.append(int(orientation))

    def clip_boxes(self, stats: SkipStats) -> None:
        """Applies the pipeline's box rule (clip to the image, keep positive areas), counting drops."""
        if not self.paths:
            return
        lengths = [len(b) for b in self.boxes]
        boxes, keep = (np.asarray(t) for t in pipeline.clip_and_keep(np.concatenate(self.boxes).reshape(-1, 4)))
        if not np.all(keep):
            stats["bad_boxes"] += int(np.sum(~keep))
        splits = np.cumsum(lengths)[:-1]
        for i, (b, k) in enumerate(zip(np.split(boxes, splits), np.split(keep, splits))):
            self.boxes[i], self.labels[i], self.difficult[i] = b[k], self.labels[i][k], self.difficult[i][k]

    def indexed(self):
        """Random access (``pipeline.IndexedSplit``): example i, its file read, not decoded."""
        from ssd_jax.data.pipeline import IndexedSplit

        tensors = self._tensors()

        def read(index):
            return {"image": tf.io.read_file(tensors["path"][index]), "boxes": tensors["boxes"][index],
                    "labels": tensors["labels"][index], "difficult": tensors["difficult"][index],
                    "image_id": tensors["image_id"][index], "orientation": tensors["orientation"][index]}

        return IndexedSplit(size=len(self), read=read)

    def _tensors(self) -> dict:
        lengths = np.asarray([len(b) for b in self.boxes], np.int64)

        def ragged(parts, dtype, width=None):
            flat = np.concatenate(parts) if parts else np.zeros((0,) if width is None else (0, width), dtype)
            return tf.RaggedTensor.from_row_lengths(flat.astype(dtype).reshape((-1,) + ((width,) if width else ())),
                                                    lengths)

        return {"path": tf.constant(self.paths, tf.string, shape=[len(self.paths)]),
                "boxes": ragged(self.boxes, np.float32, 4), "labels": ragged(self.labels, np.int32),
                "difficult": ragged(self.difficult, bool), "image_id": tf.constant(self.image_ids, tf.int64),
                "orientation": tf.constant(self.orientations, tf.int32)}

    def dataset(self, *, decode: bool = True, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
        """Canonical examples in index order, streamed (``pipeline.indexed_dataset``): each file read
        (and decoded, turned upright) as the pipeline asks for it. ``decode=False`` leaves the image
        encoded, with its 'orientation', for the training pipeline to decode after skipping."""
        from ssd_jax.data.pipeline import indexed_dataset

        return indexed_dataset(self.indexed(), decode=decode, process_index=process_index,
                               process_count=process_count)


# ----------------------------------------------------------------------------- VOC layout
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
            header = _upright_header(path, size, stats)
            if header is None:
                continue
            width, height, orientation = header
            kept = [(ids[name], corners, difficult) for name, corners, difficult in objects if name in ids]
            stats["other_classes"] += len(objects) - len(kept)
            boxes = np.asarray([corners for _, corners, _ in kept], np.float32).reshape(-1, 4)
            index.add(path, boxes / np.asarray([width, height, width, height], np.float32),
                      [label for label, _, _ in kept], [d for _, _, d in kept],
                      int(pipeline.image_id_from_filename(tf.constant(stem))), orientation)
        index.clip_boxes(stats)
        indexes[split] = index
    return names, indexes, stats, how


def _upright_header(path: str, declared_size, stats) -> tuple[int, int, int] | None:
    """(upright width, height, EXIF orientation to apply) of an image file, given the size its
    annotation declares; None (counted and logged) when the file cannot be read."""
    try:
        width, height, orientation = image_header(path)
    except OSError as error:
        stats.record("unreadable_images", path, str(error))
        return None
    orientation = orientation_to_apply(width, height, orientation, declared_size)
    return (*upright_size(width, height, orientation), orientation)


# ----------------------------------------------------------------------------- COCO json
def open_coco_json(annotations: dict[str, str], images: dict[str, str], class_names=None):
    """Indexes COCO-format json files -> (class names, category ids, {'train', 'eval': ImageIndex}, skipped).

    ``annotations`` and ``images``: {split: path} for 'train', 'eval' or both. Categories become classes 1..K in
    the order of their ids (their source ids are returned, for results in the source's terms),
    or in the order of ``class_names``. Crowd regions become ``difficult`` (not trained on).
    """
    stats = SkipStats()
    loaded = {}
    for split in annotations:
        require(annotations[split], f"COCO annotation file of the {split} split")
        require(images[split], f"COCO image folder of the {split} split")
        try:
            with open(annotations[split]) as f:
                loaded[split] = json.load(f)
        except ValueError as error:
            raise ValueError(f"{annotations[split]} is not valid JSON ({error})") from error
        if not isinstance(loaded[split], dict) or "images" not in loaded[split]:
            raise ValueError(f"{annotations[split]} is not a COCO annotation file (no 'images' list)")
    categories = {c["id"]: c["name"] for data in loaded.values() for c in data.get("categories", [])
                  if isinstance(c, dict) and "id" in c and "name" in c}
    if class_names:
        by_name = {name: cat for cat, name in categories.items()}
        missing = [name for name in class_names if name not in by_name]
        if missing:
            raise ValueError(f"class names {missing} are not categories of the COCO files "
                             f"(they have {sorted(by_name)})")
        category_ids = tuple(by_name[name] for name in class_names)
    else:
        category_ids = tuple(sorted(categories))
    names = tuple(categories[c] for c in category_ids)
    contiguous = {cat: k + 1 for k, cat in enumerate(category_ids)}
    indexes = {split: _coco_index(annotations[split], images[split], data, contiguous, set(categories), stats)
               for split, data in loaded.items()}
    return names, category_ids, indexes, stats


def _coco_index(json_path: str, image_dir: str, data: dict, contiguous: dict[int, int], known_categories: set[int],
                stats: SkipStats) -> ImageIndex:
    """The ImageIndex of one COCO json. Faults are counted under their own names with a warning
    naming the file and the entry: an image entry without id or file name, an annotation of an
    image that is not listed, of a category that is not listed, or without a valid bbox."""
    images, by_image = [], collections.defaultdict(list)
    for position, info in enumerate(data["images"]):
        if not isinstance(info, dict) or not isinstance(info.get("id"), int) or not info.get("file_name"):
            stats.record("malformed_image_entries", json_path,
                         f"images[{position}] has no integer 'id' or no 'file_name': {str(info)[:120]}")
            continue
        images.append(info)
    listed = {info["id"] for info in images}
    for position, ann in enumerate(data.get("annotations", [])):
        entry = f"annotation {ann.get('id', f'at position {position}')}" if isinstance(ann, dict) else \
            f"annotations[{position}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in listed:
            stats.record("orphan_annotations", json_path, f"{entry}: its image_id "
                         f"{ann.get('image_id') if isinstance(ann, dict) else None!r} is not in 'images'")
            continue
        by_image[ann["image_id"]].append((entry, ann))
    index = ImageIndex()
    for info in images:
        path = os.path.join(image_dir, str(info["file_name"]))
        header = _upright_header(path, (info.get("width"), info.get("height")), stats)
        if header is None:
            continue
        width, height, orientation = header
        boxes, labels, crowd = [], [], []
        for entry, ann in by_image.get(info["id"], []):
            bbox = ann.get("bbox")
            if (not isinstance(bbox, list) or len(bbox) != 4
                    or not all(isinstance(v, int | float) and np.isfinite(v) for v in bbox)):
                stats.record("malformed_annotations", json_path, f"{entry}: bbox {bbox!r} is not [x, y, w, h]")
                continue
            if ann.get("category_id") not in known_categories:
                stats.record("unknown_categories", json_path,
                             f"{entry}: category_id {ann.get('category_id')!r} is not in 'categories'")
                continue
            if ann["category_id"] not in contiguous:  # a listed category left out by class_names
                stats["other_classes"] += 1
                continue
            x, y, w, h = bbox
            boxes.append((x / width, y / height, (x + w) / width, (y + h) / height))
            labels.append(contiguous[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        index.add(path, boxes, labels, crowd, info["id"], orientation)
    index.clip_boxes(stats)
    return index
