"""Evaluation on a data set's evaluation split: the one path that training, experiments/evaluate.py
and the detection pictures share. The data set is an opened ``sources.Source`` (TFDS or on disk).
Reading the split imports TensorFlow (the input pipeline), on first use: the checks before it
(classes, output directory) answer at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator

import numpy as np

from ssd_jax import files
from ssd_jax.configs import SSDConfig
from ssd_jax.data import sources
from ssd_jax.evaluation import plots
from ssd_jax.evaluation.evaluator import Evaluator
from ssd_jax.evaluation.voc import ImageDetections, ImageGroundTruth

REPORT_FILES = ("metrics.json", "class_ap.png", "precision_recall.png")


class EvaluationError(ValueError):
    """The model does not fit the data set, or the split is empty; the message says what to do."""


def class_map_for(model_config: SSDConfig, source: sources.Source) -> np.ndarray | None:
    """The model-class -> data-set-class map: None when the model's classes are the data set's;
    for a model whose class slots are the source's category ids (torchvision's 91 COCO slots),
    the map onto the data set's classes. ``EvaluationError`` for any other class count."""
    if model_config.num_classes == source.num_classes:
        return None
    if source.category_ids is not None and model_config.num_classes == max(source.category_ids) + 1:
        table = np.zeros(model_config.num_classes, np.int64)  # unused slots (and background) -> 0: dropped
        table[list(source.category_ids)] = np.arange(1, len(source.category_ids) + 1)
        return table
    raise EvaluationError(f"the model has {model_config.num_classes} classes but {source.name} has "
                          f"{source.num_classes} (with background): evaluate it on the data set it was trained for")


def evaluator_for(model_config: SSDConfig, source: sources.Source, *, batch_size: int,
                  iou_convention: str | None = None, options=None, voc_rules: str = "voc_eval") -> Evaluator:
    """An ``Evaluator`` with the data set's class names, category ids and VOC IoU convention."""
    return Evaluator(model_config, batch_size=batch_size, class_names=source.class_names,
                     coco_category_ids=source.category_ids, iou_convention=iou_convention or source.voc_iou,
                     class_map=class_map_for(model_config, source), options=options, voc_rules=voc_rules)


def evaluation_batches(source: sources.Source, *, image_size: int, batch_size: int
                       ) -> Iterator[dict[str, np.ndarray]]:
    """The evaluation split's numpy batches (images resized to ``image_size``, all objects kept)."""
    from ssd_jax.data import pipeline

    return pipeline.as_numpy(pipeline.eval_dataset(source.examples("eval"), batch_size=batch_size,
                                                   image_size=image_size))


def is_report_file(path: str) -> bool:
    """Whether ``path`` is one of ``REPORT_FILES`` as ``write_report`` writes it (what an
    evaluation may replace): a metrics.json of ours, or a picture that ssd_jax drew."""
    if path.endswith(".json"):
        value = files.read_json(path)
        return isinstance(value, dict) and {"voc07_mAP", "voc_mAP"} <= set(value)
    return files.is_our_png(path)


def claim_report(out_dir: str, *, overwrite: bool) -> None:
    """Makes sure ``write_report`` may write in ``out_dir``, before an evaluation: the directory is
    writable (``OSError``), and its report files are free or, with ``overwrite``, an earlier
    report (``files.OutputExistsError``)."""
    files.check_writable(out_dir)
    files.claim_all([os.path.join(out_dir, name) for name in REPORT_FILES], overwrite=overwrite,
                    is_ours=is_report_file, what="evaluation results")


def evaluate_split(params, model_config: SSDConfig, source: sources.Source, *, batch_size: int,
                   iou_convention: str | None = None, voc_rules: str = "voc_eval", progress: bool = False,
                   image_size: int | None = None):
    """Detects on the whole evaluation split -> (metrics, evaluator, detections, ground truths).

    ``params``: host (numpy) parameters, or an exported detector (``ssd_jax.artifacts.Artifact``)
    with ``batch_size`` its batch. ``image_size``: the side the images are resized to before
    detection (default the model's; an ONNX artifact's fixed input size). With several processes,
    each detects on its share of the images (every process_count-th) and all records are
    gathered, ordered by image id, on every process: the metrics are those of one process
    evaluating everything. Raises
    ``EvaluationError`` if the split is empty (saying where it came from).
    """
    import jax

    from ssd_jax.data import pipeline

    evaluator = evaluator_for(model_config, source, batch_size=batch_size, iou_convention=iou_convention,
                              voc_rules=voc_rules)
    examples = source.examples("eval", process_index=jax.process_index(), process_count=jax.process_count())
    batches = pipeline.as_numpy(pipeline.eval_dataset(examples, batch_size=batch_size,
                                                      image_size=image_size or model_config.image_size))
    detections, truths = gather_records(*evaluator.collect(params, batches, progress=progress))
    if not truths:
        raise EvaluationError(f"the evaluation split of {source.name} is empty: {source.where} gave no images; "
                              f"prepare the data set again or check the data directory")
    return evaluator.metrics(detections, truths), evaluator, detections, truths


def _record_to_dict(record) -> dict:
    return {field.name: (value.tolist() if isinstance(value, np.ndarray) else value)
            for field in dataclasses.fields(record) for value in [getattr(record, field.name)]}


def gather_records(detections: list[ImageDetections], truths: list[ImageGroundTruth]):
    """Every process's evaluation records, on every process, ordered by image id (so that the
    metrics, whose ranking keeps the input order of equal scores, do not depend on the sharding)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        payload = np.frombuffer(json.dumps([[_record_to_dict(d) for d in detections],
                                            [_record_to_dict(t) for t in truths]]).encode(), np.uint8)
        sizes = np.asarray(multihost_utils.process_allgather(np.asarray([payload.size], np.int64))).reshape(-1)
        padded = np.zeros(int(sizes.max()), np.uint8)
        padded[:payload.size] = payload
        gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
        detections, truths = [], []
        for row, size in zip(gathered, sizes):
            dets, gts = json.loads(row[:size].tobytes().decode())
            detections += [ImageDetections(**d) for d in dets]
            truths += [ImageGroundTruth(**t) for t in gts]
    return (sorted(detections, key=lambda r: r.image_id), sorted(truths, key=lambda r: r.image_id))


def write_report(out_dir: str, metrics: dict, evaluator: Evaluator, detections=None, truths=None, *,
                 title: str) -> list[str]:
    """metrics.json, class_ap.png and (with the records) precision_recall.png -> the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = [files.write_json_atomically(os.path.join(out_dir, "metrics.json"), {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()})]
    per_class = {name: metrics[f"AP/{name}"] for name in evaluator.class_names}
    written.append(plots.plot_class_ap(per_class, os.path.join(out_dir, "class_ap.png"), mean_ap=metrics["voc_mAP"],
                                       title=f"{title}, all-point AP"))
    if detections is not None and truths is not None:
        curves = {name: (curve.recall, curve.precision)
                  for name, curve in evaluator.curves(detections, truths).items()}
        written.append(plots.plot_precision_recall(curves, os.path.join(out_dir, "precision_recall.png"),
                                                   per_class_ap=per_class))
    return written


def draw_split_detections(params, model_config: SSDConfig, source: sources.Source, path: str, *,
                          count: int = 12) -> str:
    """The model's detections drawn on the first ``count`` evaluation images -> ``path``."""
    import ssd_jax
    from ssd_jax import visualize

    batch = next(evaluation_batches(source, image_size=model_config.image_size, batch_size=count))
    detections = ssd_jax.detect(params, batch["image"], config=model_config)
    sheet = visualize.detection_sheet(detections, batch["image"], source.class_names)
    return files.write_png(path, sheet)


def format_table(metrics: dict, class_names) -> str:
    """The per-class AP table (markdown) and a line of COCO-style metrics."""
    def cell(value):
        return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"

    lines = ["| class | AP (VOC07 11-point) | AP (all-point) |", "|---|---|---|"]
    lines += [f"| {name} | {cell(metrics[f'AP07/{name}'])} | {cell(metrics[f'AP/{name}'])} |" for name in class_names]
    lines.append(f"| **mAP** | **{cell(metrics['voc07_mAP'])}** | **{cell(metrics['voc_mAP'])}** |")
    coco = ", ".join(f"{key[5:]} {cell(value)}" for key, value in metrics.items() if key.startswith("coco/"))
    return "\n".join(lines) + f"\n\nCOCO-style: {coco}"
