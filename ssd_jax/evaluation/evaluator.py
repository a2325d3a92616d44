"""``Evaluator``: runs ``ssd_jax.detect`` over evaluation batches and computes VOC and COCO metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tqdm

from ssd_jax.configs import SSDConfig
from ssd_jax.detect import DetectOptions, detect
from ssd_jax.evaluation.coco import evaluate_coco
from ssd_jax.evaluation.voc import (
    IOU_CONVENTIONS,
    VOC_RULES,
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


def detection_records(detections, image_ids, original_sizes, class_map=None) -> list[ImageDetections]:
    """Numpy ``Detections`` of n images (padding rows already dropped) -> per-image records in pixels.

    class_map: [C] int or None; class_map[k] is the evaluated class of the model's class k, and
    detections mapped to 0 are dropped. None: classes as they are.
    """
    records = []
    for i, (image_id, size) in enumerate(zip(image_ids, original_sizes)):
        count = int(detections.num_detections[i])
        classes = np.asarray(detections.classes[i, :count])
        keep = np.ones(count, bool)
        if class_map is not None:
            classes = np.asarray(class_map)[classes]
            keep = classes > 0
        records.append(ImageDetections(
            image_id=int(image_id),
            boxes=np.asarray(detections.boxes[i, :count], np.float64)[keep] * _pixel_scale(size),
            scores=np.asarray(detections.scores[i, :count])[keep],
            classes=classes[keep],
        ))
    return records


def _require_images(ground_truths: Sequence[ImageGroundTruth]) -> None:
    # With no images every metric is undefined; reporting them as n/a would pass for a result.
    if len(ground_truths) == 0:
        raise ValueError("the evaluation split is empty: the evaluation batches held no images, so there is "
                         "nothing to measure; check the data set's evaluation split (its name, its files, any "
                         "filter or slice)")


class Evaluator:
    """Detection metrics of a model on evaluation batches (the format of ``ssd_jax.data.pipeline``).

    ``detect`` always sees ``batch_size`` images: a smaller last batch is padded with zero images,
    whose detections are dropped, so the program compiles once.

    Boxes are compared in pixels of the original images, so the VOC metrics use the devkit's
    inclusive pixel IoU by default (``iou_convention``, see ``ssd_jax.evaluation.voc``).

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
        options: DetectOptions | None = None,
        coco_category_ids: Sequence[int] | None = None,
        iou_convention: str = "devkit",
        class_map: Sequence[int] | None = None,
        voc_rules: str = "voc_eval",
    ):
        """
        Args:
          config: the model's config.
          batch_size: the number of images per ``detect`` call; batches may not be larger.
          class_names: the K foreground class names of the evaluated classes, class k at index
            k-1; default 'class<k>'. K is C-1 for a model with C classes, or max(class_map).
          options: ``detect``'s options (``DetectOptions``; default: the model's post-processing).
          coco_category_ids: the COCO category id of each evaluated foreground class
            (``COCO_CATEGORY_IDS`` for COCO); default 1..K.
          iou_convention: the VOC metrics' IoU, "devkit" (inclusive pixel ranges, as the VOC devkit)
            or "continuous" (no "+1").
          class_map: [C] int, class_map[k] is the evaluated class (1..K) of the model's class k; 0
            drops the model's class (e.g. ``coco_category_ids_to_classes(np.arange(91))`` for a
            91-slot COCO model). Default: the model's classes are the evaluated ones.
          voc_rules: the VOC metrics' rules, "voc_eval" (py-faster-rcnn's ``voc_eval.py`` bit for
            bit) or "exact" (``ssd_jax.evaluation.voc``).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if iou_convention not in IOU_CONVENTIONS:
            raise ValueError(f"iou_convention must be one of {IOU_CONVENTIONS}, got {iou_convention!r}")
        if voc_rules not in VOC_RULES:
            raise ValueError(f"voc_rules must be one of {VOC_RULES}, got {voc_rules!r}")
        if class_map is not None:
            class_map = np.asarray(class_map, np.int64)
            if class_map.shape != (config.num_classes,):
                raise ValueError(f"class_map has shape {class_map.shape}; it needs one entry for each of the "
                                 f"model's {config.num_classes} classes")
            if np.any(class_map < 0) or class_map[0] != 0:
                raise ValueError("class_map entries must be >= 0 (0 drops the model's class), and background 0 "
                                 "must map to 0")
        self.num_classes = config.num_classes if class_map is None else int(np.max(class_map)) + 1
        num_foreground = self.num_classes - 1
        class_names = tuple(class_names) if class_names is not None else tuple(
            f"class{k}" for k in range(1, self.num_classes))
        if len(class_names) != num_foreground:
            raise ValueError(f"need {num_foreground} class names (no background), got {len(class_names)}")
        if coco_category_ids is not None and len(coco_category_ids) != num_foreground:
            raise ValueError(f"need {num_foreground} COCO category ids, got {len(coco_category_ids)}")
        self.config = config
        self.batch_size = batch_size
        self.class_names = class_names
        self.coco_category_ids = (tuple(coco_category_ids) if coco_category_ids is not None
                                  else tuple(range(1, self.num_classes)))
        self.iou_convention = iou_convention
        self.voc_rules = voc_rules
        self.class_map = class_map
        self.options = options or DetectOptions()

    def _detect(self, model, images: np.ndarray):
        """Dispatches ``detect`` on the padded batch (returns without waiting for the device), or
        runs an exported artifact on it (``ssd_jax.artifacts.Artifact``: any callable)."""
        padded = pad_batch(np.asarray(images), self.batch_size)
        if callable(model):
            return model(padded)
        return detect(model, padded, config=self.config, options=self.options)

    def collect(
        self, params, batches: Iterable[Mapping[str, np.ndarray]], *, progress: bool = False
    ) -> tuple[list[ImageDetections], list[ImageGroundTruth]]:
        """Detections and ground truth of every image, in pixels of the original images.

        ``params``: the model's parameters, or an exported detector (``ssd_jax.artifacts.load``:
        a callable uint8 images -> ``Detections``, with its own post-processing).

        Returns:
          (detections, ground_truths): one ``ImageDetections`` and one ``ImageGroundTruth`` per
          image, in the batches' order.
        """
        detections, ground_truths = [], []
        pending = None  # (device detections, n, image ids, sizes) of the previous batch

        def finish(pending):
            device_detections, n, image_ids, sizes = pending
            host = type(device_detections)(*(np.asarray(x)[:n] for x in device_detections))
            detections.extend(detection_records(host, image_ids, sizes, self.class_map))

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
        _require_images(ground_truths)
        curves = precision_recall_curves(detections, ground_truths, self.num_classes,
                                         iou_convention=self.iou_convention, rules=self.voc_rules)
        return {self.class_names[k - 1]: curve for k, curve in curves.items()}

    def metrics(self, detections, ground_truths) -> dict[str, float]:
        """The metrics dict (see the class docstring) of collected records; ``ValueError`` when there are none."""
        curves = self.curves(detections, ground_truths)
        results = {}
        for key, per_class_key, use_07_metric in (("voc07_mAP", "AP07", True), ("voc_mAP", "AP", False)):
            per_class_ap = average_precisions(curves, use_07_metric=use_07_metric, rules=self.voc_rules)
            results[key] = mean_ap(per_class_ap)
            results.update({f"{per_class_key}/{name}": ap for name, ap in per_class_ap.items()})
        coco = evaluate_coco(detections, ground_truths, category_ids=self.coco_category_ids)
        results.update({f"coco/{name}": value for name, value in coco.items()})
        return results

    def run(self, params, batches: Iterable[Mapping[str, np.ndarray]], *, progress: bool = False) -> dict[str, float]:
        """Detects on every batch and returns the metrics dict (see the class docstring)."""
        return self.metrics(*self.collect(params, batches, progress=progress))
