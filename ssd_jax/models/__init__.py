"""Flax modules of SSD."""

from ssd_jax.models.batch_norm import fold_batch_norm, init_batch_norm
from ssd_jax.models.mobilenet_v3 import MobileNetV3Large
from ssd_jax.models.resnet import ResNet50Base
from ssd_jax.models.ssd import BACKBONES, SSD, check_params, init, param_shapes
from ssd_jax.models.vgg import L2Norm, VGG16Base

__all__ = ["BACKBONES", "SSD", "L2Norm", "MobileNetV3Large", "ResNet50Base", "VGG16Base", "check_params",
           "fold_batch_norm", "init", "init_batch_norm", "param_shapes"]
