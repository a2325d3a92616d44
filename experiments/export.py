r"""Exports a trained or converted detector: StableHLO, TF SavedModel, TFLite or ONNX.

  python experiments/export.py --checkpoint=runs/shapes/params --format=savedmodel --out=out/ssd_savedmodel
  python experiments/export.py --checkpoint=W/params --format=onnx --out=out/ssd.onnx --batch=8
  python experiments/export.py --weights=ssd300_vgg16_coco.pth --weights_format=torchvision --format=stablehlo \
      --out=out/ssd300_coco.stablehlo

Every artifact takes ``images`` uint8 [N, H, W, 3] RGB and returns boxes [N, K, 4] (normalised
xmin, ymin, xmax, ymax), scores [N, K], classes [N, K] and num_detections [N]. StableHLO and the
SavedModel take any N, H and W; TFLite and ONNX a fixed --batch and --input_size (written into
their metadata). The class names, the config and the options travel with each artifact (see
ssd_jax/export.py). ONNX needs pip install -e '.[export]' && pip install --no-deps jax2onnx==0.17.1.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

FORMATS = ("stablehlo", "savedmodel", "tflite", "onnx")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "ssd_jax parameter checkpoint (e.g. WORKDIR/params).")
WEIGHTS = flags.DEFINE_string("weights", None, "Or a published weight file (.pth/.npz/.safetensors).")
WEIGHTS_FORMAT = flags.DEFINE_enum("weights_format", "torchvision", ["torchvision", "amdegroot"],
                                   "Layout of --weights.")
FORMAT = flags.DEFINE_enum("format", None, FORMATS, "The artifact to write.")
OUT = flags.DEFINE_string("out", None, "Where to write it (a file; a directory for savedmodel).")
BATCH = flags.DEFINE_integer("batch", 1, "TFLite and ONNX: the fixed batch size.", lower_bound=1)
INPUT_SIZE = flags.DEFINE_integer("input_size", None, "TFLite and ONNX: the fixed image side (default: the "
                                  "model's); resized inside to the model's.", lower_bound=1)
# Post-processing flags default to detect's defaults for the model: SSD's 0.01, 0.45, 400, 200, or
# an imported Caffe model's own DetectionOutput settings.
SCORE = flags.DEFINE_float("score_threshold", None, "Post-processing: minimum class score.", lower_bound=0.0,
                           upper_bound=1.0)
IOU = flags.DEFINE_float("iou_threshold", None, "Post-processing: NMS IoU.", lower_bound=0.0, upper_bound=1.0)
TOP_K = flags.DEFINE_integer("pre_nms_top_k", None, "Post-processing: candidates per class.", lower_bound=1)
MAX_DETECTIONS = flags.DEFINE_integer("max_detections", None, "Post-processing: K, detections per image.",
                                      lower_bound=1)


def load_model():
    """(params, config, class names or None), or exits saying what is wrong."""
    from ssd_jax import checkpoint, classes, weights

    if bool(CHECKPOINT.value) == bool(WEIGHTS.value):
        sys.exit("error: give exactly one of --checkpoint=DIR or --weights=FILE")
    try:
        if CHECKPOINT.value:
            params, config = checkpoint.load_params(CHECKPOINT.value)
            return params, config, checkpoint.load_metadata(CHECKPOINT.value).get("class_names")
        state_dict = weights.load_state_dict(WEIGHTS.value)
        if WEIGHTS_FORMAT.value == "torchvision":
            params, config = weights.from_torchvision(state_dict), weights.torchvision_config(state_dict)
        else:
            params, config = weights.from_amdegroot(state_dict), weights.amdegroot_config(state_dict)
        return params, config, classes.names_for_class_count(config.num_classes)
    except (FileNotFoundError, ValueError, ImportError, OSError) as error:
        sys.exit(f"error: {error}\n(train a model with experiments/train.py, or convert published weights with "
                 f"experiments/convert_weights.py)")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if os.path.isdir(OUT.value) and FORMAT.value != "savedmodel":
        sys.exit(f"error: --out={OUT.value} is a directory; name the {FORMAT.value} file to write")
    params, config, class_names = load_model()
    from ssd_jax import export
    from ssd_jax.detect import postprocess_options
    from ssd_jax.nms import PostprocessOptions

    given = (SCORE.value, IOU.value, TOP_K.value, MAX_DETECTIONS.value)
    options = PostprocessOptions(*(default if value is None else value
                                   for value, default in zip(given, postprocess_options(config))))
    try:
        path = export.export(params, config, OUT.value, format=FORMAT.value, options=options,
                             class_names=class_names, batch=BATCH.value, input_size=INPUT_SIZE.value)
    except export.ExportError as error:
        sys.exit(f"error: {error}")
    fixed = f", batch {BATCH.value}, images {INPUT_SIZE.value or config.image_size} px" if FORMAT.value in (
        "tflite", "onnx") else ", any batch and image size"
    print(f"wrote {FORMAT.value} of {config.name} ({config.num_classes} classes{fixed}) to {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["format", "out"])
    app.run(main)
