r"""Evaluates an ssd_jax checkpoint on a data set's evaluation split: VOC and COCO metrics.

  python experiments/evaluate.py --checkpoint=workdir/params --dataset=shapes
  python experiments/evaluate.py --checkpoint=ckpt/voc --dataset=voc --data_dir=~/tensorflow_datasets
  python experiments/evaluate.py --checkpoint=ckpt/torchvision_coco --dataset=coco  # 91 class slots

Prints a per-class table (VOC2007 11-point AP, all-point AP) and the COCO-style metrics, and
writes metrics.json, class_ap.png and precision_recall.png to --out_dir. VOC APs use the
devkit's inclusive pixel IoU unless --voc_iou=continuous. A model with 91 class slots indexed by
COCO category id (torchvision's COCO weights) is scored on COCO's 80 categories.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

import numpy as np
from absl import app, flags, logging

from ssd_jax import checkpoint
from ssd_jax.classes import COCO_CATEGORY_IDS
from ssd_jax.data import pipeline
from ssd_jax.evaluation import IOU_CONVENTIONS, Evaluator, coco_category_ids_to_classes, plots

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "ssd_jax parameter checkpoint directory (config.json + params/).")
DATASET = flags.DEFINE_enum("dataset", "shapes", sorted(pipeline.DATASETS), "Data set whose evaluation split to use.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per detect call (one compilation).")
OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write metrics and pictures (default: CHECKPOINT/eval).")
VOC_IOU = flags.DEFINE_enum("voc_iou", None, IOU_CONVENTIONS,
                            "IoU of the VOC metrics: the devkit's inclusive pixel ranges (width = xmax - xmin + 1, "
                            "what published VOC numbers use) or continuous corners (no +1). Default: the data "
                            "set's (devkit for voc, whose boxes are inclusive pixel ranges; continuous otherwise).")

# torchvision's COCO models keep a class slot for each category id 0..90, used or not.
COCO_CATEGORY_SLOTS = 91


def format_table(metrics: dict, class_names) -> str:
    def cell(value):
        return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"

    lines = ["| class | AP (VOC07 11-point) | AP (all-point) |", "|---|---|---|"]
    lines += [f"| {name} | {cell(metrics[f'AP07/{name}'])} | {cell(metrics[f'AP/{name}'])} |" for name in class_names]
    lines.append(f"| **mAP** | **{cell(metrics['voc07_mAP'])}** | **{cell(metrics['voc_mAP'])}** |")
    coco = ", ".join(f"{key[5:]} {cell(value)}" for key, value in metrics.items() if key.startswith("coco/"))
    return "\n".join(lines) + f"\n\nCOCO-style: {coco}"


def load_checkpoint(path: str):
    """(params, config), or exits with what is wrong with the checkpoint."""
    try:
        return checkpoint.load_params(path)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}\n(train one with experiments/train_voc.py, or convert published weights with "
                 f"experiments/convert_weights.py)")
    except (ValueError, OSError) as error:  # damaged files, a config that does not fit the parameters
        sys.exit(f"error: cannot load the checkpoint {path}: {error}")


def class_map_for(dataset: str, num_classes: int, spec) -> np.ndarray | None:
    """The model-class -> evaluated-class map, None if the classes are the data set's; exits on a mismatch."""
    if num_classes == spec.num_classes:
        return None
    if dataset == "coco" and num_classes == COCO_CATEGORY_SLOTS:
        print("the model has 91 class slots indexed by COCO category id (torchvision's layout): scoring it on "
              "COCO's 80 categories, detections in the 10 unused slots dropped")
        return coco_category_ids_to_classes(np.arange(COCO_CATEGORY_SLOTS))
    sys.exit(f"error: the checkpoint's model has {num_classes} classes but {dataset} has {spec.num_classes} "
             f"(with background): evaluate it on the data set it was trained for")


def require_writable(out_dir: str) -> None:
    """Creates ``out_dir`` and writes (and removes) a probe file there, or exits: before the evaluation, not after."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write_probe_"):
            pass
    except OSError as error:
        sys.exit(f"error: cannot write the results to {out_dir} ({error}); pass a writable --out_dir")


def write_results(out_dir: str, metrics: dict, evaluator: Evaluator, detections, truths, title: str) -> None:
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}, f,
                  indent=2)
    per_class = {name: metrics[f"AP/{name}"] for name in evaluator.class_names}
    plots.plot_class_ap(per_class, os.path.join(out_dir, "class_ap.png"), mean_ap=metrics["voc_mAP"],
                        title=f"{title}, all-point AP")
    curves = {name: (curve.recall, curve.precision) for name, curve in evaluator.curves(detections, truths).items()}
    plots.plot_precision_recall(curves, os.path.join(out_dir, "precision_recall.png"), per_class_ap=per_class)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    params, config = load_checkpoint(CHECKPOINT.value)
    spec = pipeline.DATASETS[DATASET.value]
    class_map = class_map_for(DATASET.value, config.num_classes, spec)
    out_dir = OUT_DIR.value or os.path.join(CHECKPOINT.value, "eval")
    require_writable(out_dir)
    try:
        source = pipeline.tfds_source(DATASET.value, "eval", data_dir=DATA_DIR.value)
    except pipeline.DatasetNotPreparedError as error:
        sys.exit(f"error: {error}")
    batches = pipeline.as_numpy(pipeline.eval_dataset(source, batch_size=BATCH_SIZE.value,
                                                      image_size=config.image_size))
    evaluator = Evaluator(config, batch_size=BATCH_SIZE.value, class_names=spec.class_names,
                          coco_category_ids=COCO_CATEGORY_IDS if DATASET.value == "coco" else None,
                          iou_convention=VOC_IOU.value or spec.voc_iou, class_map=class_map)
    detections, truths = evaluator.collect(params, batches, progress=True)
    if not truths:
        parts = ", ".join(f"{name} split {split!r}" for name, split in spec.eval)
        where = DATA_DIR.value or "TFDS's default data directory"
        sys.exit(f"error: the evaluation split of {DATASET.value} is empty: TFDS {parts} in {where} gave no images; "
                 f"prepare the data set again or check --data_dir")
    try:
        metrics = evaluator.metrics(detections, truths)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"\n{config.name} on {DATASET.value} ({len(truths)} images; VOC IoU: {evaluator.iou_convention})\n")
    print(format_table(metrics, evaluator.class_names))

    try:
        write_results(out_dir, metrics, evaluator, detections, truths, title=f"{config.name} on {DATASET.value}")
    except OSError as error:
        sys.exit(f"error: cannot write the results to {out_dir} ({error})")
    print(f"\nwrote metrics.json, class_ap.png and precision_recall.png to {out_dir}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["checkpoint"])
    app.run(main)
