"""Evaluation: VOC and COCO detection metrics, the batch ``Evaluator`` and result plots."""

from ssd_jax.evaluation.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASS_NAMES,
    COCO_METRIC_NAMES,
    coco_category_ids_to_classes,
    coco_ground_truth,
    coco_stats,
    evaluate_coco,
    to_coco_results,
)
from ssd_jax.evaluation.evaluator import Evaluator
from ssd_jax.evaluation.plots import plot_class_ap, plot_precision_recall
from ssd_jax.evaluation.voc import (
    IOU_CONVENTIONS,
    VOC_RULES,
    ImageDetections,
    ImageGroundTruth,
    PrecisionRecall,
    average_precisions,
    evaluate_voc,
    mean_ap,
    precision_recall_curves,
    voc_ap,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASS_NAMES",
    "COCO_METRIC_NAMES",
    "Evaluator",
    "IOU_CONVENTIONS",
    "VOC_RULES",
    "ImageDetections",
    "ImageGroundTruth",
    "PrecisionRecall",
    "average_precisions",
    "coco_category_ids_to_classes",
    "coco_ground_truth",
    "coco_stats",
    "evaluate_coco",
    "evaluate_voc",
    "mean_ap",
    "plot_class_ap",
    "plot_precision_recall",
    "precision_recall_curves",
    "to_coco_results",
    "voc_ap",
]
