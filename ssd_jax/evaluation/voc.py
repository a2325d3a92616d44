"""PASCAL VOC detection metrics: per-class average precision and mAP, as the VOC devkit computes them.

The rules are those of the official VOC devkit (``VOCevaldet.m``) and py-faster-rcnn's
``voc_eval.py`` (the script behind the VOC figures of most SSD and Faster R-CNN ports), per class:

* detections of all images are ranked by descending score;
* each detection is compared with the ground-truth boxes of its class in its image and takes the
  one with the highest IoU, matched or not;
* IoU above ``iou_threshold`` (0.5) and that box is ``difficult``: the detection is ignored,
  neither a true nor a false positive;
* IoU above ``iou_threshold`` and that box is not yet matched: a true positive, the box is matched;
* otherwise (box already matched: a duplicate; IoU too low; no box): a false positive;
* recall is divided by the number of non-difficult ground-truth boxes of the class.

IoU conventions (``iou_convention``):

* ``"devkit"`` (the default): boxes are inclusive integer pixel ranges, as in the devkit and
  py-faster-rcnn's ``voc_eval.py``: width = xmax - xmin + 1, height likewise, and the
  intersection's width is min(xmax) - max(xmin) + 1, clipped at 0. This is the convention of VOC
  pixel boxes (the annotation files' corners, TFDS ``voc`` times the image size) and the one the
  published VOC numbers use. On such data the continuous IoU moves mAP by about a point (VOC07
  mAP 0.490 devkit against 0.481 continuous on the VOC-like data of
  tests/test_evaluation_trust.py), the more so the smaller the boxes.
* ``"continuous"``: boxes are continuous corners, width = xmax - xmin, no "+1". Use it for
  normalised boxes (the "+1" would be a whole image wide there) and for continuous pixel corners.
  The devkit convention refuses ground truth whose coordinates all lie in [0, 1], which is what
  normalised boxes look like.

Rules (``rules``), where the references part:

* ``"voc_eval"`` (the default): py-faster-rcnn's ``voc_eval.py``, bit for bit (the test is
  tests/test_evaluation_trust.py). A detection matches at IoU > ``iou_threshold``; the VOC2007
  metric's 11 recall thresholds are ``np.arange(0.0, 1.1, 0.1)``, whose 0.3, 0.6 and 0.7 lie a
  hair above the tenth (a recall of exactly 0.3, which a class with a multiple of 10 positives
  reaches, misses the threshold 0.3), and the 11 precisions are added one by one; each class's
  detections are ranked with numpy's default ``argsort`` of the negated scores in input order
  (image by image, as its per-class detection files list them), so equal scores fall as they do
  there.
* ``"exact"``: the same metric with its plain meaning: IoU >= ``iou_threshold`` (as
  ``VOCevaldet.m``), the exact tenths k / 10 as thresholds, equal scores ranked in input order.
  It differs from ``"voc_eval"`` at an IoU of exactly 0.5, at recalls of exactly 0.3, 0.6 or
  0.7, and between detections of equal score.

Differences from both, on purpose:

* mAP averages the classes that have at least one non-difficult ground-truth box; the AP of a
  class without one is undefined (NaN), where py-faster-rcnn divides by zero.
* Box areas are clipped at 0 (an inverted box has area 0, not a negative one).
* Non-finite scores and boxes are refused (``ValueError``); the devkit would rank a NaN score
  somewhere arbitrary.
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


def _require_finite(image_id: int, name: str, values: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if np.any(bad):
        rows = np.flatnonzero(np.any(bad.reshape(len(values), -1), axis=1))
        raise ValueError(f"image {image_id}: {name} not finite (NaN or infinite) in {len(rows)} of {len(values)} "
                         f"rows, the first row {rows[0]}: {values[rows[0]]}; fix or drop them before evaluating")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDetections:
    """The detections of one image.

    image_id: int.
    boxes: [n, 4] float (xmin, ymin, xmax, ymax), pixels or normalised like the ground truth; finite.
    scores: [n] float, finite.
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
        _require_finite(self.image_id, "detection boxes", self.boxes)
        _require_finite(self.image_id, "detection scores", self.scores)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageGroundTruth:
    """The ground truth of one image.

    image_id: int.
    boxes: [m, 4] float (xmin, ymin, xmax, ymax), pixels or normalised; finite.
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
        _require_finite(self.image_id, "ground-truth boxes", self.boxes)
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


VOC_RULES = ("voc_eval", "exact")  # see the module docstring


def _check_rules(rules: str) -> None:
    if rules not in VOC_RULES:
        raise ValueError(f"rules must be one of {VOC_RULES}, got {rules!r}")


def voc_ap(recall, precision, *, use_07_metric: bool, rules: str = "voc_eval") -> float:
    """Average precision of one class from its cumulative recall and precision [n] (rank order).

    use_07_metric=True: VOC2007's 11-point metric, the mean over 11 thresholds t = 0, 0.1, ..., 1
    of the best precision at recall >= t (0 where recall never reaches t); ``rules`` "voc_eval"
    takes ``voc_eval.py``'s thresholds, "exact" the exact tenths (module docstring).
    use_07_metric=False: VOC2010+'s area under the precision envelope, the envelope at recall r
    being the best precision at recall >= r (the same under both rules).
    """
    _check_rules(rules)
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if use_07_metric:
        thresholds = np.arange(0.0, 1.1, 0.1) if rules == "voc_eval" else np.arange(11) / 10.0
        reached = recall[None, :] >= thresholds[:, None]  # [11, n]
        best = np.max(np.where(reached, precision[None, :], 0.0), axis=1, initial=0.0)
        ap = 0.0
        for p in best:  # one by one, as voc_eval.py adds them: the rounding is part of the figure
            ap = ap + p / 11.0
        return float(ap)
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


IOU_CONVENTIONS = ("devkit", "continuous")  # see the module docstring


def _extra_width(iou_convention: str) -> float:
    """What a box's width and height gain over xmax - xmin: 1 pixel for the devkit's inclusive ranges."""
    if iou_convention not in IOU_CONVENTIONS:
        raise ValueError(f"iou_convention must be one of {IOU_CONVENTIONS}, got {iou_convention!r}")
    return 1.0 if iou_convention == "devkit" else 0.0


def pairwise_iou(boxes_a, boxes_b, *, iou_convention: str) -> np.ndarray:
    """IoU of corner boxes [n, 4] x [m, 4] -> [n, m]; 0 where the union is empty.

    iou_convention: "devkit" (inclusive pixel ranges, "+1" widths) or "continuous" (see the module
    docstring).
    """
    extra = _extra_width(iou_convention)
    lo = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    hi = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = np.prod(np.maximum(hi - lo + extra, 0.0), axis=-1)
    area_a = np.prod(np.maximum(boxes_a[:, 2:] - boxes_a[:, :2] + extra, 0.0), axis=-1)
    area_b = np.prod(np.maximum(boxes_b[:, 2:] - boxes_b[:, :2] + extra, 0.0), axis=-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def _check_devkit_boxes(ground_truths: Sequence[ImageGroundTruth], iou_convention: str) -> None:
    """Refuses the devkit's "+1" on ground truth that looks normalised: it would make every IoU about 1."""
    if iou_convention != "devkit":
        return
    boxes = np.concatenate([t.boxes for t in ground_truths] + [np.zeros((0, 4))])
    if len(boxes) and np.all((boxes >= 0.0) & (boxes <= 1.0)):
        raise ValueError('the ground-truth boxes all lie in [0, 1]: they look normalised, and the devkit IoU '
                         '(iou_convention="devkit", the default) is for pixel boxes; pass '
                         'iou_convention="continuous" for normalised boxes, or scale them to pixels')


def best_ground_truth(detections: ImageDetections, truth: ImageGroundTruth, iou_threshold: float, *,
                      iou_convention: str, rules: str = "voc_eval") -> np.ndarray:
    """Index of each detection's best-overlapping ground-truth box of its class -> [n] int.

    -1 where no box of the class overlaps with IoU above ``iou_threshold`` (rules "voc_eval": >,
    "exact": >=). Whether that box is already matched does not matter (the devkit's rule): a
    duplicate stays a duplicate.
    """
    n = len(detections.scores)
    if n == 0 or len(truth.labels) == 0:
        return np.full(n, -1, np.int64)
    iou = pairwise_iou(detections.boxes, truth.boxes, iou_convention=iou_convention)
    iou = np.where(detections.classes[:, None] == truth.labels[None, :], iou, -1.0)
    best = np.argmax(iou, axis=1)  # the first of equals, like the devkit's max
    best_iou = iou[np.arange(n), best]
    return np.where(best_iou > iou_threshold if rules == "voc_eval" else best_iou >= iou_threshold, best, -1)


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
    iou_convention: str = "devkit",
    rules: str = "voc_eval",
) -> dict[int, PrecisionRecall]:
    """Matches detections to ground truth the VOC way -> {class 1..C-1: ``PrecisionRecall``}.

    Every image must have a ground-truth record, empty if it has no objects (its detections are
    then false positives); images without detections need no detection record.
    iou_convention: "devkit" for pixel boxes, "continuous" for normalised ones; rules:
    "voc_eval" or "exact" (module docstring).
    """
    _check_rules(rules)
    ground_truths = [as_ground_truth(t) for t in ground_truths]
    detections = [as_detections(d) for d in detections]
    position = _index_ground_truths(ground_truths)
    _extra_width(iou_convention)  # checks the name before any work
    _check_devkit_boxes(ground_truths, iou_convention)

    # Ground-truth boxes of all images, numbered globally.
    offsets = np.cumsum([0] + [len(t.labels) for t in ground_truths])
    gt_labels = np.concatenate([t.labels for t in ground_truths] + [np.zeros(0, np.int64)])
    gt_difficult = np.concatenate([t.difficult for t in ground_truths] + [np.zeros(0, bool)])

    matched_gt, scores, classes = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, np.int64)]
    for dets in detections:
        if dets.image_id not in position:
            raise ValueError(f"detections for image {dets.image_id}, which has no ground-truth record")
        image = position[dets.image_id]
        best = best_ground_truth(dets, ground_truths[image], iou_threshold, iou_convention=iou_convention,
                                 rules=rules)
        matched_gt.append(np.where(best >= 0, best + offsets[image], -1))
        scores.append(dets.scores)
        classes.append(dets.classes)
    matched_gt, scores, classes = (np.concatenate(x) for x in (matched_gt, scores, classes))

    hit = matched_gt >= 0
    # Index -1 (no match) reads the appended False: no index is out of range, even with no boxes at all.
    ignored = hit & np.append(gt_difficult, False)[matched_gt]
    sort_kind = "quicksort" if rules == "voc_eval" else "stable"  # numpy's default, as voc_eval.py sorts

    curves = {}
    for label in range(1, num_classes):
        members = np.flatnonzero(classes == label)
        # Ranked with the ignored ones still in, as voc_eval.py does: the unstable sort's ties depend on them.
        ranked = members[np.argsort(-scores[members], kind=sort_kind)]
        ranked = ranked[~ignored[ranked]]
        hits = ranked[hit[ranked]]
        _, first = np.unique(matched_gt[hits], return_index=True)  # each box's first hit in rank order
        true_positive = np.isin(ranked, hits[first])
        tp = np.cumsum(true_positive)
        fp = np.cumsum(~true_positive)
        num_positives = int(np.sum((gt_labels == label) & ~gt_difficult))
        curves[label] = PrecisionRecall(
            recall=tp / max(num_positives, 1),
            precision=tp / np.maximum(tp + fp, 1),
            scores=scores[ranked],
            num_positives=num_positives,
        )
    return curves


def average_precisions(curves: Mapping[int, PrecisionRecall], *, use_07_metric: bool,
                       rules: str = "voc_eval") -> dict[int, float]:
    """{class: ``PrecisionRecall``} -> {class: AP}; NaN for classes without positives."""
    return {label: voc_ap(c.recall, c.precision, use_07_metric=use_07_metric, rules=rules) if c.num_positives
            else float("nan") for label, c in curves.items()}


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
    iou_convention: str = "devkit",
    rules: str = "voc_eval",
) -> dict:
    """VOC detection metrics.

    Args:
      detections: per-image ``ImageDetections`` (or mappings with the same fields).
      ground_truths: one ``ImageGroundTruth`` per evaluated image, in the same coordinates.
      num_classes: including background; classes 1..num_classes-1 are evaluated.
      iou_threshold: the IoU a detection needs with a ground-truth box to match it.
      use_07_metric: VOC2007's 11-point AP if True, else VOC2010+'s all-point AP.
      iou_convention: "devkit" (default): the devkit's inclusive pixel ranges, for pixel boxes;
        "continuous": no "+1", for normalised boxes (see the module docstring).
      rules: "voc_eval" (default): py-faster-rcnn's ``voc_eval.py`` bit for bit; "exact": exact
        tenths, IoU >= threshold, stable ranking (see the module docstring).
    Returns:
      {'mAP': float, 'ap': {class: AP or NaN}, 'recall': {class: [n]}, 'precision': {class: [n]},
       'num_positives': {class: int}}; the mAP averages the classes with a non-difficult box.
    """
    curves = precision_recall_curves(detections, ground_truths, num_classes, iou_threshold=iou_threshold,
                                     iou_convention=iou_convention, rules=rules)
    per_class_ap = average_precisions(curves, use_07_metric=use_07_metric, rules=rules)
    return {
        "mAP": mean_ap(per_class_ap),
        "ap": per_class_ap,
        "recall": {label: c.recall for label, c in curves.items()},
        "precision": {label: c.precision for label, c in curves.items()},
        "num_positives": {label: c.num_positives for label, c in curves.items()},
    }
