"""``Evaluator``: runs ``ssd_jax.detect`` over evaluation batches and computes VOC and COCO metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tqdm

from ssd_jax.configs import SSDConfig
from ssd_jax.detect import detect
from ssd_jax.evaluation.coco import evaluate_coco
from ssd_jax.evaluation.voc import (
    ImageDetections,
    ImageGroundTruth,
    PrecisionRecall,
    average_precisions,
    mean_ap,
    precision_recall_curves,
)


def pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """[n, H, W, 3] -> [batch_size, H, W, 3], zero images appended, so that one program serves all."""
    n = len(images)
    if n > batch_size:
        raise ValueError(f"a batch of {n} images is larger than the evaluator's batch_size {batch_size}")
    if n == batch_size:
        return images
    padding = np.zeros((batch_size - n, *images.shape[1:]), images.dtype)
    return np.concatenate([images, padding])


def _pixel_scale(original_size) -> np.ndarray:
    """(height, width) -> [4] factors from normalised to pixel corner boxes."""
    height, width = (float(v) for v in original_size)
    return np.array([width, height, width, height])


def ground_truth_records(batch: Mapping[str, np.ndarray]) -> list[ImageGroundTruth]:
    """An evaluation batch -> its images' ground truth, in pixels of the original images."""
    records = []
    for i in range(len(batch["image"])):
        mask = np.asarray(batch["mask"][i], bool)
        difficult = batch["difficult"][i][mask] if "difficult" in batch else None
        height, width = (int(v) for v in batch["original_size"][i])
        records.append(ImageGroundTruth(
            image_id=int(batch["image_id"][i]),
            boxes=np.asarray(batch["boxes"][i][mask], np.float64) * _pixel_scale((height, width)),
            labels=batch["labels"][i][mask],
            difficult=difficult,
            height=height,
            width=width,
        ))
    return records


def detection_records(detections, image_ids, original_sizes) -> list[ImageDetections]:
    """Numpy ``Detections`` of n images (padding rows already dropped) -> per-image records in pixels."""
    records = []
    for i, (image_id, size) in enumerate(zip(image_ids, original_sizes)):
        count = int(detections.num_detections[i])
        records.append(ImageDetections(
            image_id=int(image_id),
            boxes=np.asarray(detections.boxes[i, :count], np.float64) * _pixel_scale(size),
            scores=detections.scores[i, :count],
            classes=detections.classes[i, :count],
        ))
    return records


class Evaluator:
    """Detection metrics of a model on evaluation batches (``ssd_jax/data/README_FORMATS.md``).

    ``detect`` always sees ``batch_size`` images: a smaller last batch is padded with zero images,
    whose detections are dropped, so the program compiles once.

    Metrics of ``run``:
      'voc07_mAP', 'voc_mAP': VOC mAP at IoU 0.5, 11-point (VOC2007) and all-point (VOC2010+).
      'AP07/<class name>', 'AP/<class name>': per-class APs of both kinds, NaN for a class
        without non-difficult ground truth (left out of the mAPs).
      'coco/AP', 'coco/AP50', ..., 'coco/ARl': COCO-style metrics (``coco.COCO_METRIC_NAMES``).
    """

    def __init__(
        self,
        config: SSDConfig,
        *,
        batch_size: int,
        class_names: Sequence[str] | None = None,
        score_threshold: float = 0.01,
        iou_threshold: float = 0.45,
        pre_nms_top_k: int = 400,
        max_detections: int = 200,
        coco_category_ids: Sequence[int] | None = None,
    ):
        """
        Args:
          config: the model's config.
          batch_size: the number of images per ``detect`` call; batches may not be larger.
          class_names: the C-1 foreground class names, class k at index k-1; default 'class<k>'.
          score_threshold, iou_threshold, pre_nms_top_k, max_detections: ``detect``'s options.
          coco_category_ids: the COCO category id of each foreground class (``COCO_CATEGORY_IDS``
            for COCO); default 1..C-1.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        num_foreground = config.num_classes - 1
        class_names = tuple(class_names) if class_names is not None else tuple(
            f"class{k}" for k in range(1, config.num_classes))
        if len(class_names) != num_foreground:
            raise ValueError(f"need {num_foreground} class names (no background), got {len(class_names)}")
        if coco_category_ids is not None and len(coco_category_ids) != num_foreground:
            raise ValueError(f"need {num_foreground} COCO category ids, got {len(coco_category_ids)}")
        self.config = config
        self.batch_size = batch_size
        self.class_names = class_names
        self.coco_category_ids = (tuple(coco_category_ids) if coco_category_ids is not None
                                  else tuple(range(1, config.num_classes)))
        self.detect_options = dict(score_threshold=score_threshold, iou_threshold=iou_threshold,
                                   pre_nms_top_k=pre_nms_top_k, max_detections=max_detections)

    def _detect(self, params, images: np.ndarray):
        """Dispatches ``detect`` on the padded batch; returns without waiting for the device."""
        return detect(params, pad_batch(np.asarray(images), self.batch_size), config=self.config,
                      **self.detect_options)

    def collect(
        self, params, batches: Iterable[Mapping[str, np.ndarray]], *, progress: bool = False
    ) -> tuple[list[ImageDetections], list[ImageGroundTruth]]:
        """Detections and ground truth of every image, in pixels of the original images.

        Returns:
          (detections, ground_truths): one ``ImageDetections`` and one ``ImageGroundTruth`` per
          image, in the batches' order.
        """
        detections, ground_truths = [], []
        pending = None  # (device detections, n, image ids, sizes) of the previous batch

        def finish(pending):
            device_detections, n, image_ids, sizes = pending
            host = type(device_detections)(*(np.asarray(x)[:n] for x in device_detections))
            detections.extend(detection_records(host, image_ids, sizes))

        total = len(batches) if hasattr(batches, "__len__") else None
        for batch in tqdm.tqdm(batches, total=total, desc="evaluating", unit="batch", disable=not progress):
            # Dispatch this batch before reading back the previous one: the device works meanwhile.
            n = len(batch["image"])
            current = (self._detect(params, batch["image"]), n, np.asarray(batch["image_id"]),
                       np.asarray(batch["original_size"]))
            ground_truths.extend(ground_truth_records(batch))
            if pending is not None:
                finish(pending)
            pending = current
        if pending is not None:
            finish(pending)
        return detections, ground_truths

    def curves(self, detections, ground_truths) -> dict[str, PrecisionRecall]:
        """VOC precision-recall curves (IoU 0.5) -> {class name: ``PrecisionRecall``}."""
        curves = precision_recall_curves(detections, ground_truths, self.config.num_classes)
        return {self.class_names[k - 1]: curve for k, curve in curves.items()}

    def metrics(self, detections, ground_truths) -> dict[str, float]:
        """The metrics dict (see the class docstring) of collected records."""
        curves = self.curves(detections, ground_truths)
        results = {}
        for key, per_class_key, use_07_metric in (("voc07_mAP", "AP07", True), ("voc_mAP", "AP", False)):
            per_class_ap = average_precisions(curves, use_07_metric=use_07_metric)
            results[key] = mean_ap(per_class_ap)
            results.update({f"{per_class_key}/{name}": ap for name, ap in per_class_ap.items()})
        coco = evaluate_coco(detections, ground_truths, category_ids=self.coco_category_ids)
        results.update({f"coco/{name}": value for name, value in coco.items()})
        return results

    def run(self, params, batches: Iterable[Mapping[str, np.ndarray]], *, progress: bool = False) -> dict[str, float]:
        """Detects on every batch and returns the metrics dict (see the class docstring)."""
        return self.metrics(*self.collect(params, batches, progress=progress))
