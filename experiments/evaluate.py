r"""Evaluates an ssd_jax checkpoint, or an exported artifact, on a data set's evaluation split: VOC
and COCO metrics.

  python experiments/evaluate.py --checkpoint=workdir/params --dataset=shapes
  python experiments/evaluate.py --artifact=out/ssd_int8.onnx --dataset=shapes  # in ONNX Runtime
  python experiments/evaluate.py --checkpoint=ckpt/voc --dataset=voc --data_dir=~/tensorflow_datasets
  python experiments/evaluate.py --checkpoint=W/params --dataset=vocdir --data_dir=MY_VOC_FOLDER
  python experiments/evaluate.py --checkpoint=W/params --dataset=cocojson --annotations=val.json --images=val/
  python experiments/evaluate.py --checkpoint=ckpt/torchvision_coco --dataset=coco  # 91 class slots

Prints a per-class table (VOC2007 11-point AP, all-point AP) and the COCO-style metrics, and
writes metrics.json, class_ap.png and precision_recall.png to --out_dir. The class names are
those stored with the checkpoint (data on disk is read with them). VOC APs on VOC data use the
devkit's inclusive pixel IoU (--voc_iou to choose) and py-faster-rcnn's voc_eval.py rules
(--voc_rules=exact for exact tenths and IoU >= 0.5). A model with a class slot per COCO category
id (torchvision's 91) is scored on COCO's 80 categories.

--artifact runs what experiments/export.py wrote in its own runtime (ONNX Runtime, the TFLite
interpreter, TensorFlow for a SavedModel, jax.export for StableHLO), with the post-processing
baked into it, at its fixed batch and image size where it has them: the same metrics, tables and
pictures as a checkpoint, so float, int8 and the checkpoint compare with one command each.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from ssd_jax import checkpoint, files
from ssd_jax.data import sources
from ssd_jax.evaluation import IOU_CONVENTIONS, VOC_RULES
from ssd_jax.evaluation import datasets as evaluation

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "ssd_jax parameter checkpoint directory (config.json + params/).")
ARTIFACT = flags.DEFINE_string("artifact", None, "Or an exported detector (experiments/export.py: .onnx, .tflite, "
                               ".stablehlo, a SavedModel directory), run in its own runtime.")
# The registered data sets, and a flag for each field they read (--data_dir, --eval_annotations, ...).
DATASET = flags.DEFINE_enum("dataset", "shapes", list(sources.names()), f"Data set: {sources.describe()}.")
DATA_FIELDS = {name: flags.DEFINE_string(name, field.default, field.help)
               for name, field in sources.all_fields().items()}
flags.DEFINE_alias("annotations", "eval_annotations")
flags.DEFINE_alias("images", "eval_images")
BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per detect call (one compilation). Default 8, or the "
                                  "artifact's fixed batch.", lower_bound=1)
OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write metrics and pictures (default: CHECKPOINT/eval, or "
                              "ARTIFACT.eval beside the artifact).")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the results of an earlier evaluation in --out_dir (never "
                              "other files).")
VOC_IOU = flags.DEFINE_enum("voc_iou", None, IOU_CONVENTIONS,
                            "IoU of the VOC metrics: the devkit's inclusive pixel ranges (width = xmax - xmin + 1, "
                            "what published VOC numbers use) or continuous corners (no +1). Default: the data "
                            "set's (devkit for VOC data, whose boxes are inclusive pixel ranges, else continuous).")

VOC_RULES_FLAG = flags.DEFINE_enum("voc_rules", "voc_eval", VOC_RULES,
                                   "Rules of the VOC metrics: py-faster-rcnn's voc_eval.py bit for bit (IoU > 0.5, its "
                                   "11 thresholds np.arange(0, 1.1, 0.1)), or exact (IoU >= 0.5, the exact tenths).")


def load_checkpoint(path: str):
    """(params, config, stored class names or None), or exits with what is wrong with the checkpoint."""
    try:
        params, config = checkpoint.load_params(path)
        return params, config, checkpoint.load_metadata(path).get("class_names")
    except FileNotFoundError as error:
        sys.exit(f"error: {error}\n(train one with experiments/train.py, or convert published weights with "
                 f"experiments/convert_weights.py)")
    except (ValueError, OSError) as error:  # damaged files, a config that does not fit the parameters
        sys.exit(f"error: cannot load the checkpoint {path}: {error}")


def load_artifact(path: str):
    """(the artifact in its runtime, its config, its class names or None), or exits with why."""
    from ssd_jax import artifacts

    try:
        artifact = artifacts.load(path)
    except (artifacts.ArtifactError, ImportError, OSError) as error:
        sys.exit(f"error: {error}")
    given = BATCH_SIZE.value
    if artifact.batch is not None and given is not None and given != artifact.batch:
        sys.exit(f"error: {path} runs batches of exactly {artifact.batch} images (fixed at export); drop --batch_size "
                 f"or give --batch_size={artifact.batch}")
    print(f"evaluating the {artifact.describe()} at {path}")
    return artifact, artifact.config, artifact.class_names


def open_data(class_names):
    """The evaluation data, read with the model's class names where the data set's classes come
    from the data (a folder, a json)."""
    try:
        source = sources.open_source(DATASET.value, **{name: flag.value for name, flag in DATA_FIELDS.items()},
                                     class_names=class_names if sources.get(DATASET.value).classes_from_data else ())
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    if source.skipped:
        print(f"{source.name} ({source.where}): {source.skipped}")
    return source


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if bool(CHECKPOINT.value) == bool(ARTIFACT.value):
        sys.exit("error: give exactly one of --checkpoint=DIR (a trained model) or --artifact=PATH (an export)")
    if ARTIFACT.value:
        model, config, class_names = load_artifact(ARTIFACT.value)
        batch_size, image_size = model.batch or BATCH_SIZE.value or 8, model.image_size
        default_out = f"{ARTIFACT.value.rstrip(os.sep)}.eval"
    else:
        model, config, class_names = load_checkpoint(CHECKPOINT.value)
        batch_size, image_size = BATCH_SIZE.value or 8, None
        default_out = os.path.join(CHECKPOINT.value, "eval")
    source = open_data(class_names)
    try:
        if evaluation.class_map_for(config, source) is not None:
            print(f"the model has {config.num_classes} class slots indexed by the source's category ids "
                  f"(torchvision's layout): scoring it on {source.name}'s categories, detections in unused slots "
                  f"dropped")
    except evaluation.EvaluationError as error:
        sys.exit(f"error: {error}")
    out_dir = OUT_DIR.value or default_out
    try:  # before the evaluation, not after it
        evaluation.claim_report(out_dir, overwrite=OVERWRITE.value)
    except files.OutputExistsError as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: cannot write the results to {out_dir} ({error}); pass a writable --out_dir")
    try:
        metrics, evaluator, detections, truths = evaluation.evaluate_split(
            model, config, source, batch_size=batch_size, iou_convention=VOC_IOU.value,
            voc_rules=VOC_RULES_FLAG.value, progress=True, image_size=image_size)
    except (sources.DatasetNotPreparedError, ValueError) as error:
        sys.exit(f"error: {error}")
    what = model.describe() if ARTIFACT.value else config.name
    print(f"\n{what} on {source.name} ({len(truths)} images; VOC IoU: {evaluator.iou_convention}, "
          f"rules: {evaluator.voc_rules})\n")
    print(evaluation.format_table(metrics, evaluator.class_names))
    try:
        evaluation.write_report(out_dir, metrics, evaluator, detections, truths,
                                title=f"{what} on {source.name}")
    except OSError as error:
        sys.exit(f"error: cannot write the results to {out_dir} ({error})")
    print(f"\nwrote {', '.join(evaluation.REPORT_FILES)} to {out_dir}")


if __name__ == "__main__":
    app.run(main)
