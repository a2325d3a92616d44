"""COCO detection metrics (AP@[.5:.95] and friends) through pycocotools, for any dataset.

The ground truth is built in memory from per-image records (no annotation file), our detections
(corner boxes, contiguous classes 1..K) become COCO results (absolute (x, y, w, h) in the
original image, COCO category ids), and ``COCOeval`` runs quietly.

On datasets other than COCO (VOC, synthetic data) the numbers are "COCO-style": object areas
are box areas unless the records give areas (COCO's own areas are segment areas, which decide
the small / medium / large buckets), and VOC's difficult objects become crowd regions by
default, so that detecting them is neither rewarded nor punished.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd_jax.classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES  # noqa: F401  (re-exported)
from ssd_jax.evaluation.voc import ImageDetections, ImageGroundTruth, as_detections, as_ground_truth

# The names of COCOeval.stats, in its order.
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_category_ids_to_classes(category_ids) -> np.ndarray:
    """COCO category ids [n] int -> our contiguous COCO classes [n] int64: 1..80, 0 where COCO has no category.

    Category ``COCO_CATEGORY_IDS[k - 1]`` becomes class k; 0 (background) and the ten ids COCO
    never used (12, 26, 29, 30, 45, 66, 68, 69, 71, 83) become 0. A model with 91 class slots
    indexed by category id (torchvision's COCO SSD) predicts category k as its class k, so
    ``coco_category_ids_to_classes(np.arange(91))`` maps its classes to ours (0: drop).
    """
    category_ids = np.asarray(category_ids)
    if np.any((category_ids < 0) | (category_ids > 90)):
        raise ValueError(f"COCO category ids run from 1 to 90 (0 is background), got {np.unique(category_ids)}")
    table = np.zeros(91, np.int64)
    table[list(COCO_CATEGORY_IDS)] = np.arange(1, len(COCO_CATEGORY_IDS) + 1)
    return table[category_ids.astype(np.int64)]


def _category_map(category_ids: Sequence[int] | None, labels: Iterable[int]) -> dict[int, int]:
    """Our class k (1..K) -> COCO category id: ``category_ids[k - 1]``, or k itself."""
    if category_ids is None:
        return {int(k): int(k) for k in labels}
    return {k: int(c) for k, c in enumerate(category_ids, start=1)}


def _category_id(mapping: Mapping[int, int], label: int) -> int:
    if label not in mapping:
        raise ValueError(f"class {label} has no COCO category id (category_ids has {len(mapping)} entries)")
    return mapping[label]


def _image_size(truth: ImageGroundTruth) -> tuple[int, int]:
    if truth.height is None or truth.width is None:
        raise ValueError(f"image {truth.image_id}: COCO metrics need the image height and width")
    return truth.height, truth.width


def _pixel_xywh(boxes, height: int, width: int, normalized: bool) -> np.ndarray:
    """Corner boxes [n, 4] -> (x, y, w, h) [n, 4] in pixels; normalised boxes are scaled first."""
    if normalized:
        boxes = boxes * np.array([width, height, width, height], np.float64)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_ground_truth(
    ground_truths: Iterable[ImageGroundTruth | Mapping],
    *,
    category_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    normalized: bool = False,
    difficult_as_crowd: bool = True,
) -> COCO:
    """Per-image ground-truth records -> an in-memory ``COCO`` object.

    Args:
      ground_truths: ``ImageGroundTruth`` records with height and width.
      category_ids: category_ids[k - 1] is the COCO id of our class k; None: the id is k.
      class_names: category names, same order; only stored.
      normalized: boxes are normalised to the image, not pixels.
      difficult_as_crowd: mark difficult objects as crowd regions, which COCOeval ignores.
    """
    ground_truths = [as_ground_truth(t) for t in ground_truths]
    labels = {int(k) for t in ground_truths for k in t.labels}
    mapping = _category_map(category_ids, labels)
    images, annotations = [], []
    for truth in ground_truths:
        height, width = _image_size(truth)
        images.append({"id": truth.image_id, "height": int(height), "width": int(width)})
        xywh = _pixel_xywh(truth.boxes, height, width, normalized)
        area = xywh[:, 2] * xywh[:, 3] if truth.area is None else truth.area
        crowd = truth.iscrowd | (truth.difficult if difficult_as_crowd else False)
        for box, label, box_area, is_crowd in zip(xywh, truth.labels, area, crowd):
            annotations.append({
                "id": len(annotations) + 1,  # COCO ids start at 1: id 0 reads as "unmatched"
                "image_id": truth.image_id,
                "category_id": _category_id(mapping, int(label)),
                "bbox": [float(v) for v in box],
                "area": float(box_area),
                "iscrowd": int(is_crowd),
            })
    categories = [{"id": cid, "name": class_names[k - 1] if class_names else str(cid)}
                  for k, cid in sorted(mapping.items())]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def to_coco_results(
    detections: Iterable[ImageDetections | Mapping],
    *,
    category_ids: Sequence[int] | None = None,
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
) -> list[dict]:
    """Our detections -> COCO results [{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}].

    Args:
      detections: ``ImageDetections`` with corner boxes and classes 1..K.
      category_ids: category_ids[k - 1] is the COCO id of our class k; None: the id is k.
      image_sizes: {image_id: (height, width)} when the boxes are normalised; None when they are
        already in pixels of the original image.
    """
    results = []
    for dets in (as_detections(d) for d in detections):
        mapping = _category_map(category_ids, dets.classes)
        if image_sizes is None:
            xywh = _pixel_xywh(dets.boxes, 1, 1, normalized=False)
        else:
            xywh = _pixel_xywh(dets.boxes, *image_sizes[dets.image_id], normalized=True)
        for box, label, score in zip(xywh.tolist(), dets.classes.tolist(), dets.scores.tolist()):
            results.append({"image_id": dets.image_id, "category_id": _category_id(mapping, label), "bbox": box,
                            "score": score})
    return results


def _empty_results(ground_truth: COCO) -> COCO:
    """A results object without detections (``COCO.loadRes`` fails on an empty list)."""
    results = COCO()
    results.dataset = {"images": list(ground_truth.dataset["images"]), "annotations": [],
                       "categories": list(ground_truth.dataset["categories"])}
    with contextlib.redirect_stdout(io.StringIO()):
        results.createIndex()
    return results


def coco_stats(ground_truth: COCO, results: list[dict]) -> dict[str, float]:
    """Runs ``COCOeval`` (bbox) quietly -> {'AP', 'AP50', ..., 'ARl'} (``COCO_METRIC_NAMES``).

    Entries are -1 where COCO defines none (no ground truth in that area range); with no
    detections at all, the others are 0. Results for an image the ground truth does not list
    raise ``ValueError`` (pycocotools would fail on a bare assertion).
    """
    unknown = sorted({r["image_id"] for r in results} - set(ground_truth.getImgIds()))
    if unknown:
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(f"detections for image {', '.join(map(str, unknown[:10]))}{more}, which has no ground-truth "
                         f"record: give every evaluated image an ImageGroundTruth (with no boxes if it has no objects)")
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = ground_truth.loadRes(results) if results else _empty_results(ground_truth)
        evaluation = COCOeval(ground_truth, loaded, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluation.stats)}


def evaluate_coco(
    detections: Iterable[ImageDetections | Mapping],
    ground_truths: Iterable[ImageGroundTruth | Mapping],
    *,
    category_ids: Sequence[int] | None = None,
    normalized: bool = False,
    difficult_as_crowd: bool = True,
) -> dict[str, float]:
    """COCO bbox metrics of per-image detections against per-image ground truth.

    Args:
      detections: ``ImageDetections``, corner boxes, classes 1..K.
      ground_truths: one ``ImageGroundTruth`` per evaluated image, with height and width; an image
        without objects needs one too (its detections are false positives).
      category_ids: category_ids[k - 1] is the COCO id of our class k (e.g. ``COCO_CATEGORY_IDS``
        for a model trained on COCO's 80 classes); None: the id is k.
      normalized: boxes (detections and ground truth) are normalised to their image; else pixels
        of the original image.
      difficult_as_crowd: difficult objects become crowd regions (ignored).
    Returns:
      {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl'}.
    """
    ground_truths = [as_ground_truth(t) for t in ground_truths]
    detections = [as_detections(d) for d in detections]
    if category_ids is None:  # identity: categories 1..K, K the largest class seen
        seen = [t.labels for t in ground_truths] + [d.classes for d in detections] + [np.zeros(0, np.int64)]
        category_ids = range(1, int(np.max(np.concatenate(seen), initial=0)) + 1)
    ground_truth = coco_ground_truth(ground_truths, category_ids=category_ids, normalized=normalized,
                                     difficult_as_crowd=difficult_as_crowd)
    sizes = {t.image_id: _image_size(t) for t in ground_truths} if normalized else None
    return coco_stats(ground_truth, to_coco_results(detections, category_ids=category_ids, image_sizes=sizes))
