"""Flax modules of SSD: the SSD module, generic over its base network, and one module per base
network (vgg, mobilenet_v3, resnet, caffe_net), each registered in ``base_networks``."""

from ssd_jax.models import base_networks
from ssd_jax.models.batch_norm import fold_batch_norm, init_batch_norm
from ssd_jax.models.mobilenet_v3 import MobileNetV3Large, MobileNetV3Settings
from ssd_jax.models.resnet import ResNet50Base, ResNet50Settings
from ssd_jax.models.ssd import SSD, check_params, init, param_shapes
from ssd_jax.models.vgg import L2Norm, VGG16Base, VGG16Settings

__all__ = ["SSD", "L2Norm", "MobileNetV3Large", "MobileNetV3Settings", "ResNet50Base", "ResNet50Settings",
           "VGG16Base", "VGG16Settings", "base_networks", "check_params", "fold_batch_norm", "init",
           "init_batch_norm", "param_shapes"]
