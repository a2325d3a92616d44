"""VGG16 base of SSD: conv1_1 .. conv5_3, L2Norm on conv4_3, the reduced fc6/fc7; its settings,
its ImageNet weights and what freezing its first blocks means."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ssd_jax import state_dicts
from ssd_jax.models import base_networks
from ssd_jax.models.fast_grads import max_pool
from ssd_jax.models.layers import conv_relu

# Convolutions per block of VGG16 (conv1_1, conv1_2 | conv2_1, conv2_2 | conv3_1 .. conv3_3 | ...).
VGG16_BLOCK_DEPTHS = (2, 2, 3, 3, 3)
# Caffe's VGG16 ImageNet mean in RGB order: what the VGG presets subtract inside the model.
IMAGENET_MEAN_RGB = (123.0, 117.0, 104.0)


@dataclasses.dataclass(frozen=True)
class VGG16Settings:
    """VGG16's widths and depths (narrower ones make ``ssd_tiny``).

    widths: channels of blocks conv1 .. conv5; depths: convolutions per block; fc_width: fc6
    and fc7; l2norm_scale: the initial scale of conv4_3's L2Norm, None for no L2Norm.
    """

    kind: ClassVar[str] = "vgg16"
    widths: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    depths: tuple[int, int, int, int, int] = VGG16_BLOCK_DEPTHS
    fc_width: int = 1024
    l2norm_scale: float | None = 20.0

    def __post_init__(self):
        if len(self.widths) != 5 or min(self.widths) <= 0 or self.fc_width <= 0:
            raise ValueError(f"VGG16: widths needs 5 positive widths and fc_width > 0, got {self.widths}, "
                             f"{self.fc_width}")
        if len(self.depths) != 5 or min(self.depths) <= 0:
            raise ValueError(f"VGG16: depths needs 5 positive convolution counts, got {self.depths}")
        if self.l2norm_scale is not None and self.l2norm_scale <= 0:
            raise ValueError(f"VGG16: l2norm_scale must be positive or None, got {self.l2norm_scale}")


def max_pool_2x2(x, *, ceil_mode: bool = False, gradients: str = "xla"):
    """2x2/2 max pool [B, H, W, C] -> [B, H/2, W/2, C]; ceil mode pads the odd edge with -inf."""
    pad_h = x.shape[1] % 2 if ceil_mode else 0
    pad_w = x.shape[2] % 2 if ceil_mode else 0
    return max_pool(x, 2, 2, ((0, pad_h), (0, pad_w)), gradients=gradients)


class L2Norm(nn.Module):
    """Scales each location's channel vector to unit L2 norm, times a learned per-channel scale.

    ParseNet's trick for conv4_3, whose activations are much larger than the deeper layers'.
    The norm is computed in float32 whatever the compute dtype.
    """

    scale_init: float = 20.0
    eps: float = 1e-12

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        squared_norm = jnp.sum(x32 * x32, axis=-1, keepdims=True)
        normalised = x32 / jnp.sqrt(jnp.maximum(squared_norm, self.eps * self.eps))
        return (normalised * scale).astype(x.dtype)


class VGG16Base(nn.Module):
    """[B, S, S, 3] normalised RGB -> [conv4_3, after L2Norm unless ``l2norm_scale`` is None;
    fc7], both NHWC.

    Pools 1, 2 and 4 are 2x2/2, pool3 rounds up (75 -> 38 for SSD300), pool5 is 3x3/1/pad 1;
    fc6 is a 3x3 conv with dilation 6 and fc7 a 1x1 conv, ReLU after each. ``batch_norm`` adds a
    BatchNorm before each ReLU (training from scratch; see ``ssd_jax.models.batch_norm``).
    ``gradients`` picks the convolutions' and poolings' gradient rules (``fast_grads``).
    """

    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    fc_width: int = 1024
    depths: tuple[int, ...] = VGG16_BLOCK_DEPTHS
    l2norm_scale: float | None = 20.0  # None: conv4_3 is a source as it is
    batch_norm: bool = False
    dtype: Any = jnp.float32
    gradients: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool = False):
        layer = functools.partial(conv_relu, dtype=self.dtype, norm=self.batch_norm, train=train,
                                  gradients=self.gradients)
        conv4_3 = None
        for block, (depth, width) in enumerate(zip(self.depths, self.widths), start=1):
            for index in range(1, depth + 1):
                x = layer(x, width, 3, padding=1, name=f"conv{block}_{index}")
            if block == 4:
                conv4_3 = x if self.l2norm_scale is None else L2Norm(self.l2norm_scale, name="conv4_3_norm")(x)
            if block < 5:
                x = max_pool_2x2(x, ceil_mode=block == 3, gradients=self.gradients)
        x = max_pool(x, 3, 1, ((1, 1), (1, 1)), gradients=self.gradients)  # pool5
        x = layer(x, self.fc_width, 3, padding=6, dilation=6, name="fc6")
        x = layer(x, self.fc_width, 1, name="fc7")
        return [conv4_3, x]


def source_sizes(settings: VGG16Settings, image_size: int) -> list[int]:
    """conv4_3 and fc7: pool1, pool2 and pool4 round down, pool3 rounds up (75 -> 38 in SSD300);
    the 3x3 convolutions, pool5 (3x3/1/pad 1) and the dilated fc6 keep the size."""
    del settings
    size = image_size // 2 // 2  # pool1, pool2
    size = -(-size // 2)  # pool3, ceil mode
    return [size, size // 2]


# ----------------------------------------------------------------------------- ImageNet weights
VGG_CONV_NAMES = tuple(f"conv{block}_{layer}" for block, depth in enumerate(VGG16_BLOCK_DEPTHS, 1)
                       for layer in range(1, depth + 1))
# Position of each conv in torchvision's vgg16().features and in the amdegroot ``vgg`` list.
VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# fc6/fc7 in the amdegroot ``vgg`` list and the reduced-fc ImageNet checkpoint.
REDUCED_FC_INDICES = {"fc6": 31, "fc7": 33}


def from_imagenet(state_dict: Mapping, *, bgr: bool = False,
                  input_mean: tuple[float, float, float] | None = None,
                  input_std: tuple[float, float, float] | None = None,
                  model_mean: tuple[float, float, float] = IMAGENET_MEAN_RGB) -> dict:
    """ImageNet VGG16 conv (and reduced fc6/fc7 if present) -> the ``backbone`` params subtree.

    Accepts torchvision's ``vgg16`` keys (``features.N``; its ``classifier.*`` is ignored: it is
    not the reduced fc) and the reduced-fc checkpoints' bare keys (``N``, fc6 = 31, fc7 = 33).

    Our model feeds conv1_1 RGB pixels in [0, 255] minus ``model_mean``. Caffe-converted weights
    already expect that (``bgr=True`` when they were trained on BGR). Weights trained on
    ``(pixels / 255 - input_mean) / input_std`` (torchvision's IMAGENET1K_V1: mean (0.485,
    0.456, 0.406), std (0.229, 0.224, 0.225)) are rescaled into conv1_1, exact except at the
    zero-padded image border.
    """
    prefix = "features." if any(k.startswith("features.") for k in state_dict) else ""
    conv_keys = {name: f"{prefix}{i}" for name, i in zip(VGG_CONV_NAMES, VGG_CONV_INDICES)}
    if all(f"{i}.weight" in state_dict for i in REDUCED_FC_INDICES.values()) and not prefix:
        conv_keys.update({name: str(i) for name, i in REDUCED_FC_INDICES.items()})
    params = state_dicts.import_backbone(state_dict, conv_keys, ignore=("classifier.",),
                                         bgr_input_layer="conv1_1" if bgr else None)
    if input_std is not None:
        first = params["backbone"]["conv1_1"]
        std = 255.0 * np.asarray(input_std, np.float32)
        mean = 255.0 * np.asarray(input_mean if input_mean is not None else (0.0, 0.0, 0.0), np.float32)
        kernel = first["kernel"] / std[None, None, :, None]
        # The weights expect (pixels - mean); we feed (pixels - model_mean).
        shift = np.asarray(model_mean, np.float32) - mean
        first["bias"] = first["bias"] + np.einsum("hwio,i->o", kernel, shift)
        first["kernel"] = kernel
    return params


def block_prefixes(settings: VGG16Settings, blocks: int) -> tuple[str, ...]:
    """The layers of blocks conv1 .. conv``blocks`` (their BatchNorms included): 'conv1_', ..."""
    del settings
    return tuple(f"conv{block}_" for block in range(1, blocks + 1))


NETWORK = base_networks.register(base_networks.BaseNetwork(
    settings=VGG16Settings,
    build=lambda settings, **options: VGG16Base(widths=settings.widths, fc_width=settings.fc_width,
                                                depths=settings.depths, l2norm_scale=settings.l2norm_scale,
                                                **options),
    source_sizes=source_sizes,
    imagenet_import=from_imagenet,
    block_prefixes=block_prefixes,
    max_frozen_blocks=5,
    imagenet_frozen_blocks=2,  # the reference SSD freezes conv1_1 .. conv2_2 of its ImageNet VGG16
))
