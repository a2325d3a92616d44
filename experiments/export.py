r"""Exports a trained or converted detector: StableHLO, TF SavedModel, TFLite or ONNX.

  python experiments/export.py --checkpoint=runs/shapes/params --format=savedmodel --out=out/ssd_savedmodel
  python experiments/export.py --checkpoint=W/params --format=onnx --out=out/ssd.onnx --batch=8
  python experiments/export.py --weights=ssd300_vgg16_coco.pth --weights_format=torchvision --format=stablehlo \
      --out=out/ssd300_coco.stablehlo
  python experiments/export.py --checkpoint=W/params --format=onnx --batch=8 --quantize=int8 \
      --calibration_images=DIR_OR_GLOB --out=out/ssd_int8.onnx

Every artifact takes ``images`` uint8 [N, H, W, 3] RGB and returns boxes [N, K, 4] (normalised
xmin, ymin, xmax, ymax), scores [N, K], classes [N, K] and num_detections [N]. StableHLO and the
SavedModel take any N, H and W; TFLite a fixed --batch and any H and W; ONNX a fixed --batch and
--input_size (written into their metadata). The class names, the config and the options travel
with each artifact (see ssd_jax/export.py). ONNX needs pip install -e '.[export]' && pip install
--no-deps jax2onnx==0.17.1.

--quantize=int8 (ONNX and TFLite) writes a post-training int8 model, calibrated on
--calibration_images (a folder or a quoted glob; the first --calibration_count images, read and
resized as detect resizes them): ONNX through ONNX Runtime's static quantization (QDQ, weights
per channel; post-processing float32), TFLite through TensorFlow's converter with a representative
data set (see ssd_jax/quantize.py). It prints the file's size and how far its detections are
from the float model's on the first calibration images. experiments/evaluate.py --artifact=PATH
measures it on a data set.

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
QUANTIZE = flags.DEFINE_enum("quantize", None, ["int8"], "ONNX and TFLite: post-training int8 quantization, "
                             "calibrated on --calibration_images.")
CALIBRATION_IMAGES = flags.DEFINE_string("calibration_images", None, "--quantize: a folder of images like those the "
                                         "model will see, or a glob pattern (quoted).")
CALIBRATION_COUNT = flags.DEFINE_integer("calibration_count", 200, "--quantize: how many of them to calibrate on.",
                                         lower_bound=1)
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
    if QUANTIZE.value and FORMAT.value not in ("onnx", "tflite"):
        sys.exit(f"error: --quantize is for onnx and tflite (the runtimes with int8 kernels); {FORMAT.value} is "
                 f"exported in float32: drop --quantize or choose --format=onnx or --format=tflite")
    if QUANTIZE.value and not CALIBRATION_IMAGES.value:
        sys.exit("error: --quantize=int8 needs --calibration_images=DIR_OR_GLOB: images like those the model will "
                 "see, from which the int8 ranges are measured")
    if CALIBRATION_IMAGES.value and not QUANTIZE.value:
        sys.exit("error: --calibration_images is for --quantize=int8; drop it for a float32 export")
    from ssd_jax import export, quantize

    try:  # before loading the model and the export's minutes of work
        export.check_output(OUT.value, FORMAT.value, overwrite=OVERWRITE.value)
        if QUANTIZE.value:
            quantize.calibration_files(CALIBRATION_IMAGES.value, CALIBRATION_COUNT.value)
    except (export.ExportError, quantize.QuantizationError) as error:
        sys.exit(f"error: {error}")
    params, config, class_names = load_model()
    calibration = None
    if QUANTIZE.value:
        size = (INPUT_SIZE.value or config.image_size) if FORMAT.value == "onnx" else config.image_size
        try:
            calibration, unreadable = quantize.calibration_images(CALIBRATION_IMAGES.value, size,
                                                                  CALIBRATION_COUNT.value)
        except quantize.QuantizationError as error:
            sys.exit(f"error: {error}")
        print(f"calibrating on {len(calibration)} images of {CALIBRATION_IMAGES.value}"
              + (f" ({len(unreadable)} unreadable, skipped; first: {unreadable[0]})" if unreadable else ""))
    from ssd_jax.detect import postprocess_options
    from ssd_jax.nms import PostprocessOptions

    given = (SCORE.value, IOU.value, TOP_K.value, MAX_DETECTIONS.value)
    options = PostprocessOptions(*(default if value is None else value
                                   for value, default in zip(given, postprocess_options(config))))
    try:
        path = export.export(params, config, OUT.value, format=FORMAT.value, options=options,
                             class_names=class_names, batch=BATCH.value, input_size=INPUT_SIZE.value,
                             overwrite=OVERWRITE.value, quantize=QUANTIZE.value, calibration_images=calibration)
    except (export.ExportError, quantize.QuantizationError) as error:
        sys.exit(f"error: {error}")
    fixed = {"tflite": f", batch {BATCH.value}, any image size",
             "onnx": f", batch {BATCH.value}, images {INPUT_SIZE.value or config.image_size} px"}.get(
                 FORMAT.value, ", any batch and image size")
    print(f"wrote {FORMAT.value} of {config.name} ({config.num_classes} classes{fixed}) to {path}")
    if QUANTIZE.value:
        report_int8(path, params, config, options, calibration)


def report_int8(path, params, config, options, calibration):
    """Prints the int8 file's size against the float32 parameters', and how far its detections
    are from the float model's (``detect``) on the first calibration images."""
    import jax
    import numpy as np

    import ssd_jax
    from ssd_jax import artifacts, quantize

    float_bytes = sum(np.asarray(leaf).size * 4 for leaf in jax.tree.leaves(params))
    print(f"int8 file: {os.path.getsize(path) / 2**20:.2f} MiB ({os.path.getsize(path) / float_bytes:.2f}x the "
          f"{float_bytes / 2**20:.2f} MiB of float32 parameters)")
    artifact = artifacts.load(path)
    images = quantize.fixed_batches(calibration[:artifact.batch or 8], artifact.batch or 8)[0]
    reference = ssd_jax.detect(params, images, config=config, **options._asdict())
    comparison = quantize.compare_detections(reference, artifact(images))
    print(f"on {len(images)} calibration images, against the float model: {quantize.describe_comparison(comparison)}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["format", "out"])
    app.run(main)
