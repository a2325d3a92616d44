"""Exported detectors run in their own runtimes: ONNX Runtime, the TFLite interpreter, TensorFlow
(SavedModel) and ``jax.export`` (StableHLO).

``load(path)`` reads an artifact that ``ssd_jax.export`` wrote (its format from its metadata) and
returns an ``Artifact``: its config, class names, fixed batch and image size where it has them,
and a call ``artifact(images uint8 [N, H, W, 3]) -> Detections`` (numpy), what ``detect`` returns.
So what is shipped (float or int8) is measured with the same metrics as a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np

from ssd_jax import configs, files
from ssd_jax.configs import SSDConfig
from ssd_jax.nms import Detections

METADATA_FILE = "ssd_jax.json"  # a SavedModel's, in its assets/


class ArtifactError(ValueError):
    """The path is not an ssd_jax artifact, or it cannot run here; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An exported detector, loaded in its runtime.

    ``batch``: the fixed batch (TFLite, ONNX) or None (any); ``image_size``: the fixed image side
    (ONNX) or None (any size, resized inside). ``metadata``: what the export wrote (config, class
    names, post-processing options, and for a quantized artifact its ``quantization``).
    """

    path: str
    format: str
    metadata: dict
    run: Callable[[np.ndarray], dict]

    @property
    def config(self) -> SSDConfig:
        return configs.from_dict(self.metadata["config"])

    @property
    def class_names(self) -> list[str] | None:
        return self.metadata.get("class_names")

    @property
    def batch(self) -> int | None:
        return self.metadata["batch"] if isinstance(self.metadata.get("batch"), int) else None

    @property
    def image_size(self) -> int | None:
        return self.metadata["image_size"] if isinstance(self.metadata.get("image_size"), int) else None

    @property
    def quantization(self) -> dict | None:
        return self.metadata.get("quantization")

    def describe(self) -> str:
        """One line: format, model, classes, batch, image size, quantization."""
        shape = (f"batch {self.batch or 'any'}, "
                 f"{f'{self.image_size} px images' if self.image_size else 'any image size'}")
        quantized = f", {self.quantization['dtype']}" if self.quantization else ", float32"
        return f"{self.format} of {self.metadata['config']['name']} ({shape}{quantized})"

    def __call__(self, images) -> Detections:
        """uint8 [N, H, W, 3] RGB (N = ``batch`` where fixed, H = W = ``image_size`` where fixed)
        -> numpy ``Detections`` with boxes [N, K, 4], scores [N, K], classes [N, K] int32 and
        num_detections [N] int32."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ArtifactError(f"the artifact takes uint8 images [N, H, W, 3], got {images.dtype} "
                                f"{list(images.shape)}")
        if self.batch is not None and images.shape[0] != self.batch:
            raise ArtifactError(f"{self.path} runs batches of exactly {self.batch} images, got {images.shape[0]}")
        if self.image_size is not None and images.shape[1:3] != (self.image_size, self.image_size):
            raise ArtifactError(f"{self.path} takes {self.image_size}x{self.image_size} images, got "
                                f"{images.shape[2]}x{images.shape[1]}")
        outputs = self.run(images)
        return Detections(boxes=np.asarray(outputs["boxes"], np.float32),
                          scores=np.asarray(outputs["scores"], np.float32),
                          classes=np.asarray(outputs["classes"], np.int32),
                          num_detections=np.asarray(outputs["num_detections"], np.int32))


def json_metadata(path: str) -> dict | None:
    """The metadata in the JSON file ``path`` if ssd_jax wrote it for an artifact (also before
    metadata named its producer), else None."""
    return files.read_json(path) if os.path.isfile(path) and files.is_our_json(
        path, legacy=lambda value: "format_version" in value and "config" in value) else None


def onnx_metadata(path: str) -> dict | None:
    """The ssd_jax metadata of an ONNX file, or None (not ONNX, or not ours)."""
    try:
        import onnx

        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file (or no onnx to read one): not an ONNX artifact
        return None
    props = {entry.key: entry.value for entry in model.metadata_props}
    return json.loads(props["ssd_jax"]) if "ssd_jax" in props else None


def read_metadata(path: str) -> dict:
    """The metadata of the ssd_jax artifact at ``path`` (its 'format' says which), or
    ``ArtifactError`` saying what the path is instead."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ArtifactError(f"no artifact at {path}: export one with experiments/export.py")
    if os.path.isdir(path):
        meta = json_metadata(os.path.join(path, "assets", METADATA_FILE))
        if meta is None:
            raise ArtifactError(f"{path} is a directory but not an ssd_jax SavedModel (no assets/{METADATA_FILE}); "
                                f"give an artifact written by experiments/export.py")
        return {**meta, "format": meta.get("format", "savedmodel")}
    meta = json_metadata(f"{path}.json")
    if meta is not None:  # StableHLO and TFLite: the metadata beside the file
        return meta
    meta = onnx_metadata(path)
    if meta is not None:
        return meta
    raise ArtifactError(f"{path} is not an ssd_jax artifact: a StableHLO or TFLite file needs its metadata "
                        f"{path}.json beside it, an ONNX file its ssd_jax metadata_props; export it with "
                        f"experiments/export.py")


# ----------------------------------------------------------------------------- runtimes
def _onnx_runner(path: str) -> Callable:
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ArtifactError(f"running an ONNX artifact needs onnxruntime ({error}): pip install -e '.[export]'"
                            ) from error
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(images):
        return dict(zip(names, session.run(None, {"images": images})))

    return run


def tflite_interpreter(path: str, *, num_threads: int | None = None):
    """LiteRT's interpreter (ai-edge-litert) where installed, else TensorFlow's; XNNPACK on (their default)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=path, num_threads=num_threads)


def _tflite_runner(path: str) -> Callable:
    runner = tflite_interpreter(path).get_signature_runner("serving_default")
    return lambda images: runner(images=images)


def _savedmodel_runner(path: str) -> Callable:
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda images: {key: value.numpy() for key, value in serve(images=tf.constant(images)).items()}


def _stablehlo_runner(path: str) -> Callable:
    import jax

    with open(path, "rb") as stream:
        exported = jax.export.deserialize(bytearray(stream.read()))
    return lambda images: {key: np.asarray(value) for key, value in exported.call(images).items()}


RUNNERS = {"onnx": _onnx_runner, "tflite": _tflite_runner, "savedmodel": _savedmodel_runner,
           "stablehlo": _stablehlo_runner}


def load(path: str | os.PathLike) -> Artifact:
    """The ssd_jax artifact at ``path`` in its runtime (``ArtifactError`` if it is none)."""
    path = os.fspath(path)
    meta = read_metadata(path)
    format = meta.get("format")
    if format not in RUNNERS:
        raise ArtifactError(f"{path}: unknown artifact format {format!r} in its metadata")
    return Artifact(path=path, format=format, metadata=meta, run=RUNNERS[format](path))
