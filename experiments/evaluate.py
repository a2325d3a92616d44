r"""Evaluates an ssd_jax checkpoint on a data set's evaluation split: VOC and COCO metrics.

  python experiments/evaluate.py --checkpoint=workdir/params --dataset=shapes
  python experiments/evaluate.py --checkpoint=ckpt/voc --dataset=voc --data_dir=~/tensorflow_datasets

Prints a per-class table (VOC2007 11-point AP, all-point AP) and the COCO-style metrics, and
writes metrics.json, class_ap.png and precision_recall.png to --out_dir.
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import app, flags, logging

from ssd_jax import checkpoint
from ssd_jax.classes import COCO_CATEGORY_IDS
from ssd_jax.data import pipeline
from ssd_jax.evaluation import Evaluator, plots

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "ssd_jax parameter checkpoint directory (config.json + params/).")
DATASET = flags.DEFINE_enum("dataset", "shapes", sorted(pipeline.DATASETS), "Data set whose evaluation split to use.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per detect call (one compilation).")
OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write metrics and pictures (default: CHECKPOINT/eval).")


def format_table(metrics: dict, class_names) -> str:
    def cell(value):
        return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"

    lines = ["| class | AP (VOC07 11-point) | AP (all-point) |", "|---|---|---|"]
    lines += [f"| {name} | {cell(metrics[f'AP07/{name}'])} | {cell(metrics[f'AP/{name}'])} |" for name in class_names]
    lines.append(f"| **mAP** | **{cell(metrics['voc07_mAP'])}** | **{cell(metrics['voc_mAP'])}** |")
    coco = ", ".join(f"{key[5:]} {cell(value)}" for key, value in metrics.items() if key.startswith("coco/"))
    return "\n".join(lines) + f"\n\nCOCO-style: {coco}"


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        params, config = checkpoint.load_params(CHECKPOINT.value)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}\n(train one with experiments/train_voc.py, or convert published weights with "
                 f"experiments/convert_weights.py)")
    spec = pipeline.DATASETS[DATASET.value]
    if config.num_classes != spec.num_classes:
        sys.exit(f"error: the checkpoint's model has {config.num_classes} classes but {DATASET.value} has "
                 f"{spec.num_classes} (with background): evaluate it on the data set it was trained for")
    try:
        source = pipeline.tfds_source(DATASET.value, "eval", data_dir=DATA_DIR.value)
    except pipeline.DatasetNotPreparedError as error:
        sys.exit(f"error: {error}")
    batches = pipeline.as_numpy(pipeline.eval_dataset(source, batch_size=BATCH_SIZE.value,
                                                      image_size=config.image_size))
    evaluator = Evaluator(config, batch_size=BATCH_SIZE.value, class_names=spec.class_names,
                          coco_category_ids=COCO_CATEGORY_IDS if DATASET.value == "coco" else None)
    detections, truths = evaluator.collect(params, batches, progress=True)
    metrics = evaluator.metrics(detections, truths)
    print(f"\n{config.name} on {DATASET.value} ({len(truths)} images)\n")
    print(format_table(metrics, evaluator.class_names))

    out_dir = OUT_DIR.value or os.path.join(CHECKPOINT.value, "eval")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}, f,
                  indent=2)
    per_class = {name: metrics[f"AP/{name}"] for name in evaluator.class_names}
    plots.plot_class_ap(per_class, os.path.join(out_dir, "class_ap.png"), mean_ap=metrics["voc_mAP"],
                        title=f"{config.name} on {DATASET.value}, all-point AP")
    curves = {name: (curve.recall, curve.precision) for name, curve in evaluator.curves(detections, truths).items()}
    plots.plot_precision_recall(curves, os.path.join(out_dir, "precision_recall.png"), per_class_ap=per_class)
    print(f"\nwrote metrics.json, class_ap.png and precision_recall.png to {out_dir}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["checkpoint"])
    app.run(main)
