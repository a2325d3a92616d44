"""ssd_jax: SSD, the Single Shot MultiBox Detector, in JAX.

The core (configs, boxes, priors, matching, losses, NMS, the model, ``detect``) is imported with
the package; the other submodules load on first use (``ssd_jax.checkpoint.load_params(...)``
works after a bare ``import ssd_jax``), so that importing ssd_jax never imports TensorFlow.
"""

import importlib

from ssd_jax import boxes, configs, losses, matching, nms
from ssd_jax.configs import SSDConfig
from ssd_jax.detect import detect
from ssd_jax.models import SSD, init
from ssd_jax.nms import Detections
from ssd_jax.priors import priors
from ssd_jax.stream import detect_stream

__version__ = "0.1.0"

# Loaded on first attribute access: some import TensorFlow (data, train) or orbax (checkpoint).
_LAZY_SUBMODULES = ("caffe", "checkpoint", "classes", "data", "evaluation", "export", "image_io", "models", "train",
                    "video", "visualize", "weights", "workdir")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"ssd_jax.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ssd_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "SSD",
    "Detections",
    "SSDConfig",
    "boxes",
    "configs",
    "detect",
    "detect_stream",
    "init",
    "losses",
    "matching",
    "nms",
    "priors",
]
