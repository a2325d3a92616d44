"""Post-training int8 quantization of exported detectors, calibrated on the user's images.

ONNX: ONNX Runtime's static quantization (``onnxruntime.quantization.quantize_static``), QDQ
format, weights int8 per output channel (symmetric), activations uint8 per tensor, ranges from
the calibration images (MinMax). Only the network's convolutions are quantized (the nodes that
compute the locations and class logits, found from the graph): ONNX Runtime runs them as int8
kernels, where the time goes. Everything else stays float32: pooling over padding of -inf has no
int8 range, and in the post-processing (softmax, box decoding, NMS) int8 would move scores and
boxes by whole quantization steps and gain no time.

TFLite: TensorFlow's converter with a representative data set (see ``ssd_jax.export``).

The calibration images are read as ``detect`` reads files and resized as ``detect`` resizes
(bilinear, half-pixel centres, no antialias) to the artifact's input size, then rounded to uint8
(the artifacts' input type).
"""

from __future__ import annotations

import glob
import logging
import os

import numpy as np

from ssd_jax import image_io
from ssd_jax.evaluation.voc import pairwise_iou

QUANTIZE_FORMATS = ("onnx", "tflite")
DEFAULT_CALIBRATION_COUNT = 200
OP_TYPES = ["Conv"]


class QuantizationError(ValueError):
    """Quantization cannot be done as asked; the message says why and what to do."""


def calibration_files(source: str, count: int = DEFAULT_CALIBRATION_COUNT) -> list[str]:
    """A folder (its image files by name) or a glob pattern -> the first ``count`` image paths;
    ``QuantizationError`` when it is missing or names no image file."""
    if count < 1:
        raise QuantizationError(f"the calibration count must be >= 1, got {count}")
    if os.path.isdir(source):
        found = sorted(os.path.join(source, name) for name in os.listdir(source)
                       if image_io.is_image_file(name) and os.path.isfile(os.path.join(source, name)))
        if not found:
            raise QuantizationError(f"the calibration folder {source} holds no image file "
                                    f"({', '.join(image_io.IMAGE_EXTENSIONS)}); give a folder of images like "
                                    f"those the model will see")
    elif glob.has_magic(source):
        found = sorted(path for path in glob.glob(source) if os.path.isfile(path) and image_io.is_image_file(path))
        if not found:
            raise QuantizationError(f"no image file matches the calibration pattern {source}")
    elif os.path.isfile(source):
        raise QuantizationError(f"--calibration_images={source} is a file; give a folder of images or a glob "
                                f"pattern (quoted) such as 'photos/*.jpg'")
    else:
        raise QuantizationError(f"the calibration folder {source} does not exist; give a folder of images or a "
                                f"glob pattern")
    return found[:count]


def resize_to_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: ``detect``'s resize, rounded to the nearest value."""
    from ssd_jax.detect import resize_images

    pixels = np.asarray(resize_images(np.asarray(image)[None], size)[0])
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def calibration_images(source: str, size: int, count: int = DEFAULT_CALIBRATION_COUNT) -> tuple[np.ndarray, list]:
    """The calibration images of ``source`` (``calibration_files``) -> (uint8 [n, size, size, 3],
    the files that could not be read, each with why). ``QuantizationError`` if none is readable."""
    images, unreadable = [], []
    for path in calibration_files(source, count):
        try:
            images.append(resize_to_uint8(image_io.read_image(path), size))
        except (OSError, ValueError) as error:
            unreadable.append(f"{path}: {error}")
    if not images:
        raise QuantizationError(f"none of the {len(unreadable)} calibration files in {source} is a readable image "
                                f"(first: {unreadable[0]})")
    return np.stack(images), unreadable


def fixed_batches(images: np.ndarray, batch: int) -> list[np.ndarray]:
    """[n, ...] -> [batch, ...] arrays covering every image once; the last is filled with the
    first images again (real images: padding with zeros would widen the calibrated ranges)."""
    count = -(-len(images) // batch) * batch
    order = np.arange(count) % len(images)
    return [images[order[start:start + batch]] for start in range(0, count, batch)]


# ----------------------------------------------------------------------------- TFLite
def int8_tflite_converter(converter, images: np.ndarray, *, batch: int) -> None:
    """Sets TensorFlow's TFLite ``converter`` to quantize to int8, calibrated on uint8 ``images``
    [n, S, S, 3] in batches of ``batch`` (the model's fixed batch)."""
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ({"images": chunk} for chunk in fixed_batches(images, batch))
    # int8 kernels wherever the converter has them; float32 where an operation has none.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]


def tflite_settings(count: int) -> dict:
    """What an int8 TFLite artifact's metadata records of its quantization."""
    import tensorflow as tf

    return {"dtype": "int8", "tool": f"tf.lite.TFLiteConverter, Optimize.DEFAULT + representative data set "
                                     f"(TensorFlow {tf.__version__})",
            "weights": "int8, symmetric, per output channel", "activations": "int8, asymmetric, per tensor",
            "calibration": "MinMax over the representative data set", "calibration_images": int(count),
            "float32": "input (uint8 -> float) and output (the four outputs, dequantized)"}


# ----------------------------------------------------------------------------- ONNX
def network_nodes(model, outputs: tuple[str, ...]) -> set[str]:
    """The names of the nodes of the ONNX graph ``model`` that the tensors ``outputs`` depend on."""
    producer = {name: node for node in model.graph.node for name in node.output}
    needed, stack = set(), list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend(node.input)
    return needed


def head_outputs(model, *, batch: int, num_priors: int, num_classes: int) -> tuple[str, str]:
    """The tensors of the ONNX graph that hold the network's locations [batch, P, 4] and logits
    [batch, P, C]: the first tensors of those shapes (shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in inferred.graph.value_info:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    found = {}
    for node in inferred.graph.node:
        for name in node.output:
            for key, shape in (("locations", (batch, num_priors, 4)), ("logits", (batch, num_priors, num_classes))):
                if shapes.get(name) == shape and key not in found:
                    found[key] = name
    if len(found) != 2:
        raise QuantizationError(f"could not find the network's outputs in the ONNX graph (found {sorted(found)}); "
                                f"export without --quantize")
    return found["locations"], found["logits"]


def _pre_processing_advice(record) -> bool:
    """Drops the quantizer's advice to run its pre-processing first (shape inference, graph
    clean-up): jax2onnx writes every shape already, and the advice would print on every export."""
    return "Please consider" not in record.getMessage()


class _Reader:
    """ONNX Runtime's calibration data reader: the fixed batches, one per call."""

    def __init__(self, batches):
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def quantize_onnx(float_path: str, out_path: str, images: np.ndarray, *, batch: int, num_priors: int,
                  num_classes: int) -> dict:
    """Quantizes the float ONNX detector ``float_path`` (``ssd_jax.export.to_onnx``) to
    ``out_path``, calibrated on uint8 ``images`` [n, S, S, 3] (S its input size) -> the settings
    (what the artifact's metadata records)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(float_path)
    network = network_nodes(model, head_outputs(model, batch=batch, num_priors=num_priors, num_classes=num_classes))
    float_nodes = [node.name for node in model.graph.node if node.name not in network]
    logging.getLogger().addFilter(_pre_processing_advice)
    try:
        quantize_static(float_path, out_path, _Reader(fixed_batches(images, batch)), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=float_nodes,
                        op_types_to_quantize=OP_TYPES)
    finally:
        logging.getLogger().removeFilter(_pre_processing_advice)
    return {"dtype": "int8", "tool": f"onnxruntime.quantization.quantize_static, onnxruntime {onnxruntime.__version__}",
            "format": "QDQ", "weights": "int8, symmetric, per output channel",
            "activations": "uint8, asymmetric, per tensor", "calibration": "MinMax",
            "calibration_images": int(len(images)), "int8 operations": "the network's convolutions",
            "float32": "the rest: pooling, activations, the heads' reshapes, post-processing (softmax, box "
                       "decoding, NMS)"}


# ----------------------------------------------------------------------------- how far from float
def compare_detections(reference, other, *, min_score: float = 0.3) -> dict:
    """How far ``other``'s detections are from ``reference``'s (both ``Detections`` of the same
    images): of the reference's detections scoring at least ``min_score``, the fraction that
    ``other`` has too (a detection of the same class with IoU > 0.5), and over those the mean
    IoU and the mean and largest score difference."""
    found, ious, score_gaps, count = 0, [], [], 0
    for i in range(len(reference.num_detections)):
        n, m = int(reference.num_detections[i]), int(other.num_detections[i])
        keep = np.asarray(reference.scores[i, :n]) >= min_score
        boxes, scores = np.asarray(reference.boxes[i, :n])[keep], np.asarray(reference.scores[i, :n])[keep]
        classes = np.asarray(reference.classes[i, :n])[keep]
        count += len(boxes)
        if not len(boxes) or not m:
            continue
        overlap = pairwise_iou(boxes, np.asarray(other.boxes[i, :m]), iou_convention="continuous")
        overlap[classes[:, None] != np.asarray(other.classes[i, :m])[None, :]] = 0
        best = overlap.argmax(axis=1)
        for j, k in enumerate(best):
            if overlap[j, k] > 0.5:
                found += 1
                ious.append(overlap[j, k])
                score_gaps.append(abs(float(scores[j]) - float(other.scores[i, k])))
    return {"detections": count, "found": found / count if count else float("nan"),
            "mean_iou": float(np.mean(ious)) if ious else float("nan"),
            "mean_score_difference": float(np.mean(score_gaps)) if score_gaps else float("nan"),
            "max_score_difference": float(np.max(score_gaps)) if score_gaps else float("nan")}


def describe_comparison(comparison: dict, min_score: float = 0.3) -> str:
    """``compare_detections``' dict -> one line."""
    if not comparison["detections"]:
        return f"the float model detects nothing scoring >= {min_score} on these images: nothing to compare"
    return (f"{comparison['found']:.1%} of the float model's {comparison['detections']} detections scoring >= "
            f"{min_score} found (same class, IoU > 0.5); over those, mean IoU {comparison['mean_iou']:.3f}, score "
            f"difference mean {comparison['mean_score_difference']:.4f}, largest "
            f"{comparison['max_score_difference']:.4f}")
