"""PASCAL VOC detection metrics: per-class average precision and mAP, as the VOC devkit computes them.

The rules are those of the official VOC devkit (``VOCevaldet.m``) and py-faster-rcnn's
``voc_eval.py``, per class:

* detections of all images are ranked by descending score (ties keep their input order);
* each detection is compared with the ground-truth boxes of its class in its image and takes the
  one with the highest IoU, matched or not;
* IoU >= ``iou_threshold`` (0.5) and that box is ``difficult``: the detection is ignored, neither
  a true nor a false positive;
* IoU >= ``iou_threshold`` and that box is not yet matched: a true positive, the box is matched;
* otherwise (box already matched: a duplicate; IoU too low; no box): a false positive;
* recall is divided by the number of non-difficult ground-truth boxes of the class.

Differences from the devkit, on purpose:

* Boxes are float (xmin, ymin, xmax, ymax), normalised or in pixels, and the IoU has no "+1":
  the old devkit treats boxes as inclusive integer pixel ranges (width = xmax - xmin + 1). On
  VOC pixel boxes this makes our IoUs very slightly lower, on small boxes mostly.
* The 11 recall thresholds of the VOC2007 metric are the exact tenths k / 10; py-faster-rcnn's
  ``np.arange(0, 1.1, 0.1)`` has 0.30000000000000004 and friends, so a recall of exactly 0.3
  reaches the threshold 0.3 here and misses it there.
* mAP averages the classes that have at least one non-difficult ground-truth box; the AP of a
  class without one is undefined (NaN), where py-faster-rcnn divides by zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

# ----------------------------------------------------------------------------------------------
# Per-image records, shared with the COCO metrics and the evaluator.


def _array(values, dtype, shape_tail=()):
    array = np.asarray([] if values is None else values, dtype)
    return array.reshape((-1, *shape_tail))


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDetections:
    """The detections of one image.

    image_id: int.
    boxes: [n, 4] float (xmin, ymin, xmax, ymax), pixels or normalised like the ground truth.
    scores: [n] float.
    classes: [n] int, 1..C-1 (0 is background).
    """

    image_id: int
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "image_id", int(self.image_id))
        object.__setattr__(self, "boxes", _array(self.boxes, np.float64, (4,)))
        object.__setattr__(self, "scores", _array(self.scores, np.float64))
        object.__setattr__(self, "classes", _array(self.classes, np.int64))
        if not len(self.boxes) == len(self.scores) == len(self.classes):
            raise ValueError(f"image {self.image_id}: {len(self.boxes)} boxes, {len(self.scores)} scores and "
                             f"{len(self.classes)} classes")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageGroundTruth:
    """The ground truth of one image.

    image_id: int.
    boxes: [m, 4] float (xmin, ymin, xmax, ymax), pixels or normalised.
    labels: [m] int, 1..C-1.
    difficult: [m] bool, VOC's hard objects; all False when not given.
    height, width: the image size in pixels; needed for the COCO metrics only.
    iscrowd: [m] bool, COCO's crowd regions; all False when not given (COCO metrics only).
    area: [m] float, COCO's object areas (segment areas in COCO); box areas when not given.
    """

    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray | None = None
    height: int | None = None
    width: int | None = None
    iscrowd: np.ndarray | None = None
    area: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "image_id", int(self.image_id))
        object.__setattr__(self, "boxes", _array(self.boxes, np.float64, (4,)))
        object.__setattr__(self, "labels", _array(self.labels, np.int64))
        m = len(self.boxes)
        for name in ("difficult", "iscrowd"):
            value = getattr(self, name)
            object.__setattr__(self, name, np.zeros(m, bool) if value is None else _array(value, bool))
        if self.area is not None:
            object.__setattr__(self, "area", _array(self.area, np.float64))
        for name in ("labels", "difficult", "iscrowd", "area"):
            value = getattr(self, name)
            if value is not None and len(value) != m:
                raise ValueError(f"image {self.image_id}: {m} boxes but {len(value)} {name}")


def as_detections(record) -> ImageDetections:
    """An ``ImageDetections`` or a mapping with its fields -> ``ImageDetections``."""
    return record if isinstance(record, ImageDetections) else ImageDetections(**record)


def as_ground_truth(record) -> ImageGroundTruth:
    """An ``ImageGroundTruth`` or a mapping with its fields -> ``ImageGroundTruth``."""
    return record if isinstance(record, ImageGroundTruth) else ImageGroundTruth(**record)


# ----------------------------------------------------------------------------------------------
# Average precision


def voc_ap(recall, precision, *, use_07_metric: bool) -> float:
    """Average precision of one class from its cumulative recall and precision [n] (rank order).

    use_07_metric=True: VOC2007's 11-point metric, the mean over t = 0, 0.1, ..., 1 of the best
    precision at recall >= t (0 where recall never reaches t).
    use_07_metric=False: VOC2010+'s area under the precision envelope, the envelope at recall r
    being the best precision at recall >= r.
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if use_07_metric:
        thresholds = np.arange(11) / 10.0  # exact tenths, see the module docstring
        reached = recall[None, :] >= thresholds[:, None]  # [11, n]
        best = np.max(np.where(reached, precision[None, :], 0.0), axis=1, initial=0.0)
        return float(np.mean(best))
    # Sentinels: recall runs from 0 to 1, precision falls to 0 past the last detection.
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])  # where recall grows
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]))


# ----------------------------------------------------------------------------------------------
# Matching


class PrecisionRecall(NamedTuple):
    """One class's ranked detections, ignored ones left out.

    recall, precision: [n] cumulative, in rank order (recall 0 when the class has no positives).
    scores: [n] the detections' scores, descending.
    num_positives: the class's non-difficult ground-truth boxes.
    """

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray
    num_positives: int


def pairwise_iou(boxes_a, boxes_b) -> np.ndarray:
    """IoU of corner boxes [n, 4] x [m, 4] -> [n, m], no "+1"; 0 where the union is empty."""
    lo = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    hi = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = np.prod(np.maximum(hi - lo, 0.0), axis=-1)
    area_a = np.prod(np.maximum(boxes_a[:, 2:] - boxes_a[:, :2], 0.0), axis=-1)
    area_b = np.prod(np.maximum(boxes_b[:, 2:] - boxes_b[:, :2], 0.0), axis=-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def best_ground_truth(detections: ImageDetections, truth: ImageGroundTruth, iou_threshold: float) -> np.ndarray:
    """Index of each detection's best-overlapping ground-truth box of its class -> [n] int.

    -1 where no box of the class overlaps with IoU >= ``iou_threshold``. Whether that box is
    already matched does not matter (the devkit's rule): a duplicate stays a duplicate.
    """
    n = len(detections.scores)
    if n == 0 or len(truth.labels) == 0:
        return np.full(n, -1, np.int64)
    iou = pairwise_iou(detections.boxes, truth.boxes)
    iou = np.where(detections.classes[:, None] == truth.labels[None, :], iou, -1.0)
    best = np.argmax(iou, axis=1)  # the first of equals, like the devkit's max
    return np.where(iou[np.arange(n), best] >= iou_threshold, best, -1)


def _index_ground_truths(ground_truths: Sequence[ImageGroundTruth]) -> dict[int, int]:
    index = {}
    for position, truth in enumerate(ground_truths):
        if truth.image_id in index:
            raise ValueError(f"image {truth.image_id} has two ground-truth records")
        index[truth.image_id] = position
    return index


def precision_recall_curves(
    detections: Iterable[ImageDetections | Mapping],
    ground_truths: Iterable[ImageGroundTruth | Mapping],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
) -> dict[int, PrecisionRecall]:
    """Matches detections to ground truth the VOC way -> {class 1..C-1: ``PrecisionRecall``}.

    Every image must have a ground-truth record, empty if it has no objects (its detections are
    then false positives); images without detections need no detection record.
    """
    ground_truths = [as_ground_truth(t) for t in ground_truths]
    detections = [as_detections(d) for d in detections]
    position = _index_ground_truths(ground_truths)

    # Ground-truth boxes of all images, numbered globally.
    offsets = np.cumsum([0] + [len(t.labels) for t in ground_truths])
    gt_labels = np.concatenate([t.labels for t in ground_truths] + [np.zeros(0, np.int64)])
    gt_difficult = np.concatenate([t.difficult for t in ground_truths] + [np.zeros(0, bool)])

    matched_gt, scores, classes = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, np.int64)]
    for dets in detections:
        if dets.image_id not in position:
            raise ValueError(f"detections for image {dets.image_id}, which has no ground-truth record")
        image = position[dets.image_id]
        best = best_ground_truth(dets, ground_truths[image], iou_threshold)
        matched_gt.append(np.where(best >= 0, best + offsets[image], -1))
        scores.append(dets.scores)
        classes.append(dets.classes)
    matched_gt, scores, classes = (np.concatenate(x) for x in (matched_gt, scores, classes))

    # Rank all detections at once: a box can only be hit by detections of its own class, so the
    # first hit of each box in the global ranking is the first in its class's ranking too.
    order = np.argsort(-scores, kind="stable")
    hit = matched_gt >= 0
    ignored = hit & gt_difficult[np.maximum(matched_gt, 0)]
    candidates = order[(hit & ~ignored)[order]]  # rank order
    _, first = np.unique(matched_gt[candidates], return_index=True)
    true_positive = np.zeros(len(scores), bool)
    true_positive[candidates[first]] = True

    curves = {}
    for label in range(1, num_classes):
        ranked = order[(classes[order] == label) & ~ignored[order]]
        tp = np.cumsum(true_positive[ranked])
        fp = np.cumsum(~true_positive[ranked])
        num_positives = int(np.sum((gt_labels == label) & ~gt_difficult))
        curves[label] = PrecisionRecall(
            recall=tp / max(num_positives, 1),
            precision=tp / np.maximum(tp + fp, 1),
            scores=scores[ranked],
            num_positives=num_positives,
        )
    return curves


def average_precisions(curves: Mapping[int, PrecisionRecall], *, use_07_metric: bool) -> dict[int, float]:
    """{class: ``PrecisionRecall``} -> {class: AP}; NaN for classes without positives."""
    return {label: voc_ap(c.recall, c.precision, use_07_metric=use_07_metric) if c.num_positives else float("nan")
            for label, c in curves.items()}


def mean_ap(per_class_ap: Mapping[int, float]) -> float:
    """Mean of the defined (non-NaN) APs; NaN when none is defined."""
    values = np.array([v for v in per_class_ap.values() if not np.isnan(v)])
    return float(np.mean(values)) if len(values) else float("nan")


def evaluate_voc(
    detections: Iterable[ImageDetections | Mapping],
    ground_truths: Iterable[ImageGroundTruth | Mapping],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict:
    """VOC detection metrics.

    Args:
      detections: per-image ``ImageDetections`` (or mappings with the same fields).
      ground_truths: one ``ImageGroundTruth`` per evaluated image, in the same coordinates.
      num_classes: including background; classes 1..num_classes-1 are evaluated.
      iou_threshold: the IoU a detection needs with a ground-truth box to match it.
      use_07_metric: VOC2007's 11-point AP if True, else VOC2010+'s all-point AP.
    Returns:
      {'mAP': float, 'ap': {class: AP or NaN}, 'recall': {class: [n]}, 'precision': {class: [n]},
       'num_positives': {class: int}}; the mAP averages the classes with a non-difficult box.
    """
    curves = precision_recall_curves(detections, ground_truths, num_classes, iou_threshold=iou_threshold)
    per_class_ap = average_precisions(curves, use_07_metric=use_07_metric)
    return {
        "mAP": mean_ap(per_class_ap),
        "ap": per_class_ap,
        "recall": {label: c.recall for label, c in curves.items()},
        "precision": {label: c.precision for label, c in curves.items()},
        "num_positives": {label: c.num_positives for label, c in curves.items()},
    }
