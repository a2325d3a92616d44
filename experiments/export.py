r"""Exports a trained or converted detector: StableHLO, TF SavedModel, TFLite or ONNX.

  python experiments/export.py --checkpoint=runs/shapes/params --format=savedmodel --out=out/ssd_savedmodel
  python experiments/export.py --checkpoint=W/params --format=onnx --out=out/ssd.onnx --batch=8
  python experiments/export.py --weights=ssd300_vgg16_coco.pth --weights_format=torchvision --format=stablehlo \
      --out=out/ssd300_coco.stablehlo

Every artifact takes ``images`` uint8 [N, H, W, 3] RGB and returns boxes [N, K, 4] (normalised
xmin, ymin, xmax, ymax), scores [N, K], classes [N, K] and num_detections [N]. StableHLO and the
SavedModel take any N, H and W; TFLite a fixed --batch and any H and W; ONNX a fixed --batch and
--input_size (written into their metadata). The class names, the config and the options travel
with each artifact (see ssd_jax/export.py). ONNX needs pip install -e '.[export]' && pip install
--no-deps jax2onnx==0.17.1.

An existing --out is replaced only with --overwrite, and only if it is an ssd_jax export of the
same format (its metadata says so): never a folder or file of anything else.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

FORMATS = ("stablehlo", "savedmodel", "tflite", "onnx")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "ssd_jax parameter checkpoint (e.g. WORKDIR/params).")
WEIGHTS = flags.DEFINE_string("weights", None, "Or a published weight file (.pth/.npz/.safetensors).")
WEIGHTS_FORMAT = flags.DEFINE_enum("weights_format", "torchvision", ["torchvision", "amdegroot", "nvidia", "caffe"],
                                   "Layout of --weights (caffe: a .caffemodel, with --prototxt).")
PROTOTXT = flags.DEFINE_string("prototxt", None, "--weights_format=caffe: the deploy prototxt of the caffemodel.")
FORMAT = flags.DEFINE_enum("format", None, FORMATS, "The artifact to write.")
OUT = flags.DEFINE_string("out", None, "Where to write it (a file; a directory for savedmodel).")
BATCH = flags.DEFINE_integer("batch", 1, "TFLite and ONNX: the fixed batch size.", lower_bound=1)
INPUT_SIZE = flags.DEFINE_integer("input_size", None, "ONNX: the fixed image side (default: the model's); resized "
                                  "inside to the model's. The other formats take any size.", lower_bound=1)
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an ssd_jax export of the same format at --out (never "
                              "anything else).")
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
    from ssd_jax import weights

    if bool(CHECKPOINT.value) == bool(WEIGHTS.value):
        sys.exit("error: give exactly one of --checkpoint=DIR or --weights=FILE")
    try:
        params, config, metadata = weights.load_detector(checkpoint=CHECKPOINT.value, weights=WEIGHTS.value,
                                                         format=WEIGHTS_FORMAT.value, prototxt=PROTOTXT.value)
        return params, config, metadata.get("class_names")
    except (FileNotFoundError, ValueError, ImportError, OSError) as error:
        sys.exit(f"error: {error}\n(train a model with experiments/train.py, or convert published weights with "
                 f"experiments/convert_weights.py)")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if os.path.isdir(OUT.value) and FORMAT.value != "savedmodel":
        sys.exit(f"error: --out={OUT.value} is a directory; name the {FORMAT.value} file to write")
    if INPUT_SIZE.value is not None and FORMAT.value != "onnx":
        sys.exit(f"error: --input_size fixes the image size of ONNX models; {FORMAT.value} takes any image size")
    if BATCH.value != 1 and FORMAT.value not in ("tflite", "onnx"):
        sys.exit(f"error: --batch fixes the batch of TFLite and ONNX models; {FORMAT.value} takes any batch")
    from ssd_jax import export

    try:  # before loading the model and the export's minutes of work
        export.check_output(OUT.value, FORMAT.value, overwrite=OVERWRITE.value)
    except export.ExportError as error:
        sys.exit(f"error: {error}")
    params, config, class_names = load_model()
    from ssd_jax.detect import postprocess_options
    from ssd_jax.nms import PostprocessOptions

    given = (SCORE.value, IOU.value, TOP_K.value, MAX_DETECTIONS.value)
    options = PostprocessOptions(*(default if value is None else value
                                   for value, default in zip(given, postprocess_options(config))))
    try:
        path = export.export(params, config, OUT.value, format=FORMAT.value, options=options,
                             class_names=class_names, batch=BATCH.value, input_size=INPUT_SIZE.value,
                             overwrite=OVERWRITE.value)
    except export.ExportError as error:
        sys.exit(f"error: {error}")
    fixed = {"tflite": f", batch {BATCH.value}, any image size",
             "onnx": f", batch {BATCH.value}, images {INPUT_SIZE.value or config.image_size} px"}.get(
                 FORMAT.value, ", any batch and image size")
    print(f"wrote {FORMAT.value} of {config.name} ({config.num_classes} classes{fixed}) to {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["format", "out"])
    app.run(main)
