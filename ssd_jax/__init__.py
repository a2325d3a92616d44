"""ssd_jax: SSD, the Single Shot MultiBox Detector, in JAX."""

from ssd_jax import boxes, configs, losses, matching, nms
from ssd_jax.configs import SSDConfig
from ssd_jax.detect import detect
from ssd_jax.models import SSD, init
from ssd_jax.nms import Detections
from ssd_jax.priors import priors

__version__ = "0.1.0"

__all__ = [
    "SSD",
    "Detections",
    "SSDConfig",
    "boxes",
    "configs",
    "detect",
    "init",
    "losses",
    "matching",
    "nms",
    "priors",
]
