"""Exported detectors: StableHLO, TF SavedModel, TFLite and ONNX, one function per format.

Every artifact has ``ssd_jax.detect``'s signature: input ``images`` uint8 [N, H, W, 3] (RGB),
outputs ``boxes`` [N, K, 4] normalised (xmin, ymin, xmax, ymax), ``scores`` [N, K], ``classes``
[N, K] int32 and ``num_detections`` [N] int32, with the post-processing options given at export.
The class names, the model config and the options travel with it (``metadata``).

| format | batch N | image H, W | metadata |
|---|---|---|---|
| StableHLO (``jax.export``) | free | free (resized inside) | ``PATH.json`` beside it |
| SavedModel (``jax2tf``) | free | free (resized inside, by TF) | ``assets/ssd_jax.json`` |
| TFLite (from the SavedModel route) | fixed (``batch``); another one fails | free (resized inside) | ``PATH.json`` |
| ONNX (``jax2onnx``) | fixed (``batch``) | fixed (``input_size``) | ``metadata_props`` |

Why: jax2onnx exports this program at a fixed batch and size, and TFLite runs the detection
program at a fixed batch (its interpreter fails on the dynamic shapes a free batch would need).
The TFLite model takes images of any size and resizes them inside, as the SavedModel does; its
first operation reshapes the input to its own batch, so that another batch fails there instead
of answering for its first image only. ONNX Runtime refuses other shapes itself. The
SavedModel serves any batch by running its fixed-batch program once per image (``tf.map_fn``).
TF 2.21 reads StableHLO up to 1.13.7 while jax 0.10 writes the 4-week window (1.15.0): the
SavedModel and TFLite programs are written for the 12-week window, which TF reads. TFLite and
ONNX run the post-processing as ``nms.portable_batched_nms`` (top_k and a while loop, the ops
they all have) and max pooling as slices and maxima (ONNX Runtime's MaxPool refuses jax2onnx's
4-d window): the same detections, but for the order of exactly equal scores.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import artifacts, configs, files
from ssd_jax import boxes as box_lib
from ssd_jax.configs import SSDConfig
from ssd_jax.detect import _detect, postprocess_options, resize_images
from ssd_jax.models import SSD, fast_grads
from ssd_jax.nms import DEFAULTS, PostprocessOptions, portable_batched_nms
from ssd_jax.priors import priors

FORMATS = ("stablehlo", "savedmodel", "tflite", "onnx")
OUTPUTS = ("boxes", "scores", "classes", "num_detections")
METADATA_FILE = artifacts.METADATA_FILE


class ExportError(ValueError):
    """The export cannot be made as asked; the message says why and what to do."""


def metadata(config: SSDConfig, options: PostprocessOptions, class_names=None, **extra) -> dict:
    """What travels with an artifact: the model config, class names, post-processing options."""
    return {"producer": files.PRODUCER, "format_version": 1, "config": configs.to_dict(config),
            "class_names": list(class_names) if class_names else None, "postprocess": options._asdict(),
            "inputs": {"images": "uint8 [N, H, W, 3] RGB"}, "outputs": list(OUTPUTS), **extra}


def _as_dict(detections) -> dict:
    return dict(zip(OUTPUTS, detections))


def detect_function(params, config: SSDConfig, options: PostprocessOptions = DEFAULTS) -> Callable:
    """uint8 images [N, H, W, 3] -> {outputs}: ``ssd_jax.detect`` with the parameters bound."""
    params = jax.tree.map(jnp.asarray, params)

    def run(images):
        return _as_dict(_detect(params, images, config=config, dtype=jnp.dtype(jnp.float32), network_batch=None,
                                **options._asdict()))

    return run


def portable_detect_function(params, config: SSDConfig, options: PostprocessOptions = DEFAULTS) -> Callable:
    """float32 pixels [N, S, S, 3] (the model's input size) -> {outputs}, in ops every runtime has."""
    params = jax.tree.map(jnp.asarray, params)
    model = SSD(config, gradients="fast_pool")  # its pooling's forward: slices and maxima
    prior_boxes = jnp.asarray(priors(config))

    def run(pixels):
        locations, logits = model.apply({"params": params}, pixels)
        scores = jax.nn.softmax(logits, axis=-1)
        boxes = box_lib.decode(locations, prior_boxes, config.variances, config.decode_clamp)
        boxes = jnp.clip(boxes, 0.0, 1.0) if config.clip_boxes else boxes
        return _as_dict(portable_batched_nms(boxes, scores, **options._asdict()))

    return run


def _exporter(exporter: Callable) -> Callable:
    """An exporter ``(params, config, path, *, options=None, overwrite=False, ...)``: options default
    to the model's own (``detect.postprocess_options``); ``path`` is checked before the (long)
    export, and its program is traced with native depthwise convolutions (not the taps that a
    CPU host would otherwise trace)."""

    @functools.wraps(exporter)
    def wrapped(params, config: SSDConfig, path: str, *, options: PostprocessOptions | None = None,
                overwrite: bool = False, **kwargs):
        path = os.fspath(path)
        check_output(path, exporter.__name__.removeprefix("to_"), overwrite=overwrite)
        with fast_grads.native_depthwise(), _quiet_tensorflow():
            return exporter(params, config, path, options=postprocess_options(config) if options is None else options,
                            **kwargs)

    return wrapped


def _is_our_metadata(path: str, format: str) -> bool:
    """Whether the JSON file ``path`` is the metadata of an ssd_jax ``format`` artifact."""
    meta = artifacts.json_metadata(path)
    return meta is not None and meta.get("format") == format


def is_artifact(path: str, format: str) -> bool:
    """Whether ``path`` is an artifact of ``format`` that ssd_jax exported (its metadata says so):
    what ``overwrite`` may replace."""
    if format == "savedmodel":
        return os.path.isdir(path) and _is_our_metadata(os.path.join(path, "assets", METADATA_FILE), format)
    if os.path.isdir(path):
        return False
    if format == "onnx":
        return artifacts.onnx_metadata(path) is not None
    # StableHLO and TFLite: the metadata beside the file (the file may be gone).
    return _is_our_metadata(f"{path}.json", format)


def check_output(path: str, format: str, *, overwrite: bool = False) -> bool:
    """Refuses to write an export where it cannot or must not, before the (long) export: a
    directory it cannot write in, an existing path without ``overwrite``, or anything there (the
    artifact or its metadata file) that is not an ssd_jax artifact of this format -> whether it
    will replace one."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        files.check_writable(parent)
    except OSError as error:
        raise ExportError(f"cannot write the export to {path} ({error}); choose another --out") from error
    what = f"a {format} export"
    try:
        taken = files.claim(path, overwrite=overwrite, is_ours=lambda p: is_artifact(p, format), what=what)
        if format in ("stablehlo", "tflite"):
            taken |= files.claim(f"{path}.json", overwrite=overwrite, is_ours=lambda p: _is_our_metadata(p, format),
                                 what=f"the metadata of {what}")
    except files.OutputExistsError as error:
        raise ExportError(str(error)) from error
    return taken


class _UnsavedGradientNotes:
    """A logging filter for the one TensorFlow note an export always triggers: that the functions
    the converter reloads have custom gradients, which an exported detector never asks for."""

    @staticmethod
    def filter(record) -> bool:
        return not str(record.msg).startswith("Importing a function (")


@contextlib.contextmanager
def _quiet_tensorflow():
    """Holds back TensorFlow's notes about what it is not asked to do while it converts our program
    (it logs them through absl; every other warning still shows)."""
    import logging

    logger = logging.getLogger("absl")
    logger.addFilter(_UnsavedGradientNotes)
    try:
        yield
    finally:
        logger.removeFilter(_UnsavedGradientNotes)


# ----------------------------------------------------------------------------- StableHLO
@_exporter
def to_stablehlo(params, config: SSDConfig, path: str, *, options: PostprocessOptions = DEFAULTS,
                 class_names=None) -> str:
    """A serialized ``jax.export.Exported`` of detect, batch and image size symbolic, parameters
    inside -> ``path``; ``jax.export.deserialize(data).call(images)`` returns the outputs dict.
    The metadata goes to ``path + '.json'``."""
    n, h, w = jax.export.symbolic_shape("n, h, w")
    exported = jax.export.export(jax.jit(detect_function(params, config, options)))(
        jax.ShapeDtypeStruct((n, h, w, 3), jnp.uint8))
    files.write_json_atomically(f"{path}.json", metadata(config, options, class_names, format="stablehlo",
                                                          batch="free", image_size="free"))
    files.write_atomically(path, bytes(exported.serialize()))
    return path


# ----------------------------------------------------------------------------- TensorFlow
@contextlib.contextmanager
def _stablehlo_for_tensorflow():
    """Serializes StableHLO for the 12-week compatibility window while active: what TF 2.21's
    XlaCallModule reads (jax writes the 4-week window by default)."""
    from jax._src.lib.mlir.dialects import hlo

    original = hlo.get_version_from_compatibility_requirement
    hlo.get_version_from_compatibility_requirement = (
        lambda requirement: original(hlo.StablehloCompatibilityRequirement.WEEK_12))
    try:
        yield
    finally:
        hlo.get_version_from_compatibility_requirement = original


def _tf_core(params, config: SSDConfig, options: PostprocessOptions):
    """The portable program float32 [N, S, S, 3] -> outputs, as a TF function (jax2tf), for the
    static batch of its TF caller."""
    from jax.experimental import jax2tf

    # with_gradient=False: an exported detector is never differentiated, and jax2tf would otherwise
    # trace a VJP of the whole program (which fails on a Caffe network's integer-valued ops).
    return jax2tf.convert(portable_detect_function(params, config, options), polymorphic_shapes=None,
                          native_serialization_platforms=("cpu",), with_gradient=False)


def _tf_resize(images, size: int):
    """uint8 [N, H, W, 3] -> float32 [N, S, S, 3]: bilinear, half-pixel centres, no antialias, as
    ``detect``'s resize."""
    import tensorflow as tf

    pixels = tf.cast(images, tf.float32)
    return tf.image.resize(pixels, [size, size], method="bilinear", antialias=False)


@_exporter
def to_savedmodel(params, config: SSDConfig, path: str, *, options: PostprocessOptions = DEFAULTS,
                  class_names=None) -> str:
    """A TF SavedModel directory with signature ``serving_default``: ``images`` uint8 [N, H, W, 3],
    any N, H and W -> the outputs; metadata in ``assets/ssd_jax.json``."""
    import tensorflow as tf

    size = config.image_size
    with _stablehlo_for_tensorflow():
        core = _tf_core(params, config, options)
        signature = {"boxes": tf.float32, "scores": tf.float32, "classes": tf.int32, "num_detections": tf.int32}

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
                     autograph=False)
        def serve(images):
            def one(image):  # the program has a fixed batch of one: once per image
                return {key: value[0] for key, value in core(_tf_resize(image[None], size)).items()}

            return tf.map_fn(one, images, fn_output_signature=signature)

        module = tf.Module()
        module.serve = serve
        staging = files.staging_directory(path)
        try:
            meta = files.write_json_atomically(os.path.join(staging, METADATA_FILE), metadata(
                config, options, class_names, format="savedmodel", batch="free", image_size="free"))
            module.metadata = tf.saved_model.Asset(meta)
            model_dir = os.path.join(staging, "model")
            tf.saved_model.save(module, model_dir, signatures={"serving_default": serve})
            files.replace(model_dir, path)
        finally:
            files.discard(staging)
    return path


@_exporter
def to_tflite(params, config: SSDConfig, path: str, *, options: PostprocessOptions = DEFAULTS, class_names=None,
              batch: int = 1, calibration: np.ndarray | None = None) -> str:
    """A TFLite model: ``images`` uint8 [batch, H, W, 3], any H and W (resized inside to the
    model's size, as ``detect`` resizes) -> the outputs, under signature 'serving_default';
    metadata in ``path + '.json'``. Another batch size fails in the interpreter (its first
    operation reshapes the input to ``batch`` images).

    ``calibration``: uint8 images [n, S, S, 3] at the model's size S: an int8 model
    (``quantize.TFLITE_SETTINGS``), its ranges from these images, instead of float32."""
    import tensorflow as tf

    from ssd_jax import quantize

    with _stablehlo_for_tensorflow():
        core = _tf_core(params, config, options)

        @tf.function(input_signature=[tf.TensorSpec([batch, None, None, 3], tf.uint8, name="images")],
                     autograph=False)
        def serve(images):
            shape = tf.shape(images)
            # The interpreter resizes its input to whatever it is given: this reshape fails for another
            # batch, instead of the program answering for the first image(s) only.
            images = tf.reshape(images, tf.stack([batch, shape[1], shape[2], 3]))
            return core(_tf_resize(images, config.image_size))

        module = tf.Module()
        module.serve = serve
        staging = files.staging_directory(path)
        try:
            tf.saved_model.save(module, staging, signatures={"serving_default": serve})
            converter = tf.lite.TFLiteConverter.from_saved_model(staging)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if calibration is not None:
                quantize.int8_tflite_converter(converter, calibration, batch=batch)
            model = converter.convert()
        finally:
            files.discard(staging)
    extra = {} if calibration is None else {"quantization": quantize.tflite_settings(len(calibration))}
    files.write_json_atomically(f"{path}.json", metadata(config, options, class_names, format="tflite", batch=batch,
                                                          image_size="free", **extra))
    files.write_atomically(path, model)
    return path


# ----------------------------------------------------------------------------- ONNX
@_exporter
def to_onnx(params, config: SSDConfig, path: str, *, options: PostprocessOptions = DEFAULTS, class_names=None,
            batch: int = 1, input_size: int | None = None, calibration: np.ndarray | None = None) -> str:
    """An ONNX model (jax2onnx): input ``images`` uint8 [batch, input_size, input_size, 3], outputs
    named boxes, scores, classes, num_detections; metadata in ``metadata_props``.

    ``calibration``: uint8 images [n, input_size, input_size, 3]: the network quantized to int8
    (``quantize.quantize_onnx``: ONNX Runtime's static QDQ), its ranges from these images."""
    import logging

    logging.getLogger("jax2onnx").setLevel(logging.ERROR)  # its optional example plugins say what they lack
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # notes on shapes of values it does not need to write
    try:
        import onnx  # noqa: F401  (the model's metadata is written with it)
        from jax2onnx import to_onnx as jax_to_onnx
    except ImportError as error:
        raise ExportError(f"ONNX export needs onnx, onnx-ir and jax2onnx ({error}): pip install -e '.[export]' "
                          f"&& pip install --no-deps 'jax2onnx==0.17.1'") from error
    input_size = input_size or config.image_size
    core = portable_detect_function(params, config, options)

    def run(images):
        pixels = images.astype(jnp.float32)
        if input_size != config.image_size:
            pixels = resize_images(pixels, config.image_size)
        outputs = core(pixels)
        return tuple(outputs[name] for name in OUTPUTS)

    model = jax_to_onnx(run, [jax.ShapeDtypeStruct((batch, input_size, input_size, 3), jnp.uint8)],
                        model_name=config.name, input_names=["images"], output_names=list(OUTPUTS))
    extra = {}
    if calibration is not None:
        model, extra["quantization"] = _quantized_onnx(model, path, calibration, batch=batch, config=config)
    info = metadata(config, options, class_names, format="onnx", batch=batch, image_size=input_size, **extra)
    del model.metadata_props[:]
    for key, value in (("ssd_jax", json.dumps(info)), ("class_names", json.dumps(info["class_names"]))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    files.write_atomically(path, model.SerializeToString())
    return path


def _quantized_onnx(model, path: str, calibration: np.ndarray, *, batch: int, config: SSDConfig):
    """The float ONNX ``model`` -> (its int8 version, the quantization settings), through files in
    a staging directory beside ``path`` (ONNX Runtime's quantizer works on files)."""
    import onnx

    from ssd_jax import quantize

    staging = files.staging_directory(path)
    try:
        float_path, int8_path = os.path.join(staging, "float.onnx"), os.path.join(staging, "int8.onnx")
        files.write_atomically(float_path, model.SerializeToString())
        settings = quantize.quantize_onnx(float_path, int8_path, calibration, batch=batch,
                                          num_priors=len(priors(config)), num_classes=config.num_classes)
        return onnx.load(int8_path), settings
    finally:
        files.discard(staging)


EXPORTERS = {"stablehlo": to_stablehlo, "savedmodel": to_savedmodel, "tflite": to_tflite, "onnx": to_onnx}


def export(params, config: SSDConfig, path: str, *, format: str, options: PostprocessOptions | None = None,
           class_names=None, batch: int = 1, input_size: int | None = None, overwrite: bool = False,
           quantize: str | None = None, calibration_images: np.ndarray | None = None) -> str:
    """Writes ``format`` (one of ``FORMATS``) of the detector to ``path``; returns it.

    ``options``: the post-processing baked in (default: ``postprocess_options(config)``, as
    ``detect``). ``batch``: the fixed batch of TFLite and ONNX; ``input_size``: ONNX's fixed
    image side (TFLite, StableHLO and the SavedModel take any size). An existing ``path`` is
    replaced only with ``overwrite`` and only if it is an ssd_jax export of the same format
    (``ExportError`` otherwise, before any work); the new artifact takes its place whole.
    ``quantize="int8"`` (ONNX and TFLite): post-training int8, calibrated on
    ``calibration_images``, uint8 [n, S, S, 3] at the artifact's input size S (ONNX's
    ``input_size``, else the model's): ``ssd_jax.quantize.calibration_images`` reads a folder so.
    """
    if format not in EXPORTERS:
        raise ExportError(f"unknown format {format!r}; choose one of {list(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and format not in ("onnx", "tflite"):
        raise ExportError(f"{format} cannot be quantized here: int8 export is for onnx and tflite (the runtimes that "
                          f"run int8 kernels); export {format} in float32")
    if quantize and (calibration_images is None or len(calibration_images) == 0):
        raise ExportError("int8 export needs calibration images: the ranges of the activations come from them")
    if quantize:
        size = (input_size or config.image_size) if format == "onnx" else config.image_size
        shape = np.shape(calibration_images)
        if len(shape) != 4 or shape[1:] != (size, size, 3) or np.asarray(calibration_images).dtype != np.uint8:
            raise ExportError(f"calibration images must be uint8 [n, {size}, {size}, 3] (the artifact's input size), "
                              f"got {np.asarray(calibration_images).dtype} {list(shape)}")
    if batch < 1 or (input_size is not None and input_size < 1):
        raise ExportError(f"batch and input_size must be >= 1, got {batch}, {input_size}")
    if input_size is not None and format != "onnx":
        raise ExportError(f"input_size fixes the image size of ONNX models only; {format} takes any size")
    if batch != 1 and format not in ("tflite", "onnx"):
        raise ExportError(f"batch fixes the batch of TFLite and ONNX models only; {format} takes any batch")
    kwargs = {"options": options, "class_names": class_names, "overwrite": overwrite}
    if format == "tflite":
        kwargs.update(batch=batch)
    if format == "onnx":
        kwargs.update(batch=batch, input_size=input_size)
    if quantize:
        kwargs.update(calibration=np.asarray(calibration_images))
    return EXPORTERS[format](jax.tree.map(np.asarray, params), config, path, **kwargs)
