"""The index of a data set on disk, shared by its readers (``vocdir``, ``cocojson``).

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
import os
from typing import TYPE_CHECKING

import numpy as np
from absl import logging
from PIL import Image

from ssd_jax import image_io

if TYPE_CHECKING:  # TensorFlow is imported when the index is read, not when a reader is registered
    from ssd_jax.data.canonical import IndexedSplit

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
        """Applies the canonical box rule (clip to the image, keep positive areas), counting drops:
        ``canonical.clip_and_keep``'s arithmetic, in float32, without TensorFlow."""
        for i, boxes in enumerate(self.boxes):
            boxes = np.clip(boxes.astype(np.float32), np.float32(0), np.float32(1))
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            if not np.all(keep):
                stats["bad_boxes"] += int(np.sum(~keep))
            self.boxes[i] = boxes[keep]
            self.labels[i], self.difficult[i] = self.labels[i][keep], self.difficult[i][keep]

    def indexed(self) -> IndexedSplit:
        """Random access: example i, its file read, not decoded (with its EXIF 'orientation')."""
        import tensorflow as tf

        from ssd_jax.data.canonical import IndexedSplit

        tensors = self._tensors()

        def read(index):
            return {"image": tf.io.read_file(tensors["path"][index]), "boxes": tensors["boxes"][index],
                    "labels": tensors["labels"][index], "difficult": tensors["difficult"][index],
                    "image_id": tensors["image_id"][index], "orientation": tensors["orientation"][index]}

        return IndexedSplit(size=len(self), read=read)

    def dataset(self, *, decode: bool = True, process_index: int = 0, process_count: int = 1):
        """Canonical examples in index order, streamed (``canonical.indexed_dataset``): each file read
        (and decoded, turned upright) as the pipeline asks for it. ``decode=False`` leaves the image
        encoded, with its 'orientation', for the training pipeline to decode after skipping."""
        from ssd_jax.data.canonical import indexed_dataset

        return indexed_dataset(self.indexed(), decode=decode, process_index=process_index,
                               process_count=process_count)

    def _tensors(self) -> dict:
        import tensorflow as tf

        lengths = np.asarray([len(b) for b in self.boxes], np.int64)

        def ragged(parts, dtype, width=None):
            flat = np.concatenate(parts) if parts else np.zeros((0,) if width is None else (0, width), dtype)
            return tf.RaggedTensor.from_row_lengths(flat.astype(dtype).reshape((-1,) + ((width,) if width else ())),
                                                    lengths)

        return {"path": tf.constant(self.paths, tf.string, shape=[len(self.paths)]),
                "boxes": ragged(self.boxes, np.float32, 4), "labels": ragged(self.labels, np.int32),
                "difficult": ragged(self.difficult, bool), "image_id": tf.constant(self.image_ids, tf.int64),
                "orientation": tf.constant(self.orientations, tf.int32)}


def upright_header(path: str, declared_size, stats) -> tuple[int, int, int] | None:
    """(upright width, height, EXIF orientation to apply) of an image file, given the size its
    annotation declares; None (counted and logged) when the file cannot be read."""
    try:
        width, height, orientation = image_header(path)
    except OSError as error:
        stats.record("unreadable_images", path, str(error))
        return None
    orientation = orientation_to_apply(width, height, orientation, declared_size)
    return (*upright_size(width, height, orientation), orientation)
