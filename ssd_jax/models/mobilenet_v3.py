"""MobileNetV3-Large (Howard et al., 2019) as the base of SSDLite, laid out as torchvision's.

Layer names follow torchvision's ``mobilenet_v3_large().features`` so that its weights map one
to one: ``stem`` (features.0), ``b{i}_expand`` / ``b{i}_dw`` / ``b{i}_se_reduce`` /
``b{i}_se_expand`` / ``b{i}_project`` for the inverted-residual block features.{i} (i = 1 .. 15),
``last`` (features.16).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax import state_dicts
from ssd_jax.models import base_networks
from ssd_jax.models.layers import conv, conv_act


@dataclasses.dataclass(frozen=True)
class MobileNetV3Settings:
    """reduced_tail: the last stage at half width (160 -> 80 channels, last layer 960 -> 480), as
    torchvision builds SSDLite without an ImageNet backbone (so its COCO weights have it)."""

    kind: ClassVar[str] = "mobilenet_v3_large"
    reduced_tail: bool = False


class Block(NamedTuple):
    """One inverted-residual block: 1x1 expansion, depthwise ``kernel``, optional squeeze-and-
    excitation, 1x1 projection; a residual connection when the shape is kept."""

    kernel: int
    expanded: int
    out: int
    squeeze_excite: bool
    activation: str  # "relu" or "hardswish"
    stride: int


STEM_WIDTH = 16
# MobileNetV3-Large (the paper's Table 1; torchvision's ``_mobilenet_v3_conf('mobilenet_v3_large')``).
LARGE_BLOCKS = (
    Block(3, 16, 16, False, "relu", 1),
    Block(3, 64, 24, False, "relu", 2),
    Block(3, 72, 24, False, "relu", 1),
    Block(5, 72, 40, True, "relu", 2),
    Block(5, 120, 40, True, "relu", 1),
    Block(5, 120, 40, True, "relu", 1),
    Block(3, 240, 80, False, "hardswish", 2),
    Block(3, 200, 80, False, "hardswish", 1),
    Block(3, 184, 80, False, "hardswish", 1),
    Block(3, 184, 80, False, "hardswish", 1),
    Block(3, 480, 112, True, "hardswish", 1),
    Block(3, 672, 112, True, "hardswish", 1),
    Block(5, 672, 160, True, "hardswish", 2),
    Block(5, 960, 160, True, "hardswish", 1),
    Block(5, 960, 160, True, "hardswish", 1),
)
# SSDLite's first source is the expansion layer of the last stride-2 block (torchvision's C4).
FIRST_SOURCE_BLOCK = 13


def large_blocks(reduced_tail: bool = False) -> tuple[Block, ...]:
    """MobileNetV3-Large's blocks; ``reduced_tail`` halves the last stage (blocks 13-15's output
    160 -> 80 and their expansion 960 -> 480; the paper's Table 6 variant for detection)."""
    if not reduced_tail:
        return LARGE_BLOCKS
    head, tail = LARGE_BLOCKS[:FIRST_SOURCE_BLOCK - 1], LARGE_BLOCKS[FIRST_SOURCE_BLOCK - 1:]
    tail = [tail[0]._replace(out=tail[0].out // 2)] + [b._replace(expanded=b.expanded // 2, out=b.out // 2)
                                                       for b in tail[1:]]
    return (*head, *tail)


def make_divisible(value: float, divisor: int = 8) -> int:
    """The channel rounding of MobileNet: to a multiple of ``divisor``, never below 90% of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def squeeze_excite(x, name: str, *, dtype: Any, gradients: str):
    """x [B, H, W, C] * hard_sigmoid(1x1 conv(relu(1x1 conv(mean over H, W)))): channel gates."""
    channels = x.shape[-1]
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(dtype)
    scale = conv(make_divisible(channels // 4), 1, name=f"{name}_se_reduce", dtype=dtype, gradients=gradients)(pooled)
    scale = conv(channels, 1, name=f"{name}_se_expand", dtype=dtype, gradients=gradients)(nn.relu(scale))
    return x * jax.nn.hard_sigmoid(scale)


class MobileNetV3Large(nn.Module):
    """[B, S, S, 3] normalised RGB -> [block 13's expansion (672 channels, S/16), last layer
    (960, S/32)]: SSDLite's two backbone sources. BatchNorm after every convolution but the
    squeeze-and-excitation ones when ``batch_norm`` (folded into the convolutions otherwise).
    ``reduced_tail``: the last stage at half width, the last layer 480 channels."""

    reduced_tail: bool = False
    batch_norm: bool = False
    dtype: Any = jnp.float32
    gradients: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool = False):
        layer = functools.partial(conv_act, dtype=self.dtype, norm=self.batch_norm, train=train,
                                  gradients=self.gradients)
        x = layer(x, STEM_WIDTH, 3, stride=2, padding=1, activation="hardswish", name="stem")
        sources = []
        blocks = large_blocks(self.reduced_tail)
        for i, block in enumerate(blocks, start=1):
            name = f"b{i}"
            shortcut = x
            if block.expanded != x.shape[-1]:
                x = layer(x, block.expanded, 1, activation=block.activation, name=f"{name}_expand")
            if i == FIRST_SOURCE_BLOCK:
                sources.append(x)
            x = layer(x, block.expanded, block.kernel, stride=block.stride, padding=(block.kernel - 1) // 2,
                      groups=block.expanded, activation=block.activation, name=f"{name}_dw")
            if block.squeeze_excite:
                x = squeeze_excite(x, name, dtype=self.dtype, gradients=self.gradients)
            x = layer(x, block.out, 1, activation="none", name=f"{name}_project")
            if block.stride == 1 and shortcut.shape[-1] == block.out:
                x = x + shortcut
        x = layer(x, 6 * blocks[-1].out, 1, activation="hardswish", name="last")  # 960, or 480 reduced
        return [*sources, x]


def source_sizes(settings: MobileNetV3Settings, image_size: int) -> list[int]:
    """Five stride-2 convolutions with "same"-style padding (each rounds up); the sources are the
    expansion of the block before the last stride-2 one (1/16) and the last layer (1/32)."""
    del settings
    size = image_size
    for _ in range(4):
        size = (size - 1) // 2 + 1
    return [size, (size - 1) // 2 + 1]


# ----------------------------------------------------------------------------- torchvision's weights
# torchvision builds MobileNetV3's BatchNorms with eps 0.001 (SSDLite's too).
BN_EPS = 1e-3


def conv_norm(key: str) -> state_dicts.ConvBN:
    """torchvision's ``Conv2dNormActivation`` at ``key``: conv ``key.0``, BatchNorm ``key.1``."""
    return state_dicts.ConvBN(f"{key}.0", f"{key}.1")


def _block_keys(index: int, prefix: str, *, expands: bool, squeeze_excite: bool) -> dict:
    """Our layer names of block ``index`` -> torchvision's keys under ``prefix`` (an
    ``InvertedResidual.block``: [expand], depthwise, [squeeze-excitation], project)."""
    names = (["expand"] if expands else []) + ["dw"] + (["se"] if squeeze_excite else []) + ["project"]
    keys: dict = {}
    for position, name in enumerate(names):
        if name == "se":
            keys[f"b{index}_se_reduce"] = f"{prefix}.{position}.fc1"
            keys[f"b{index}_se_expand"] = f"{prefix}.{position}.fc2"
        else:
            keys[f"b{index}_{name}"] = conv_norm(f"{prefix}.{position}")
    return keys


def torchvision_keys(settings: MobileNetV3Settings, *, ssdlite: bool) -> dict:
    """Our layer names -> torchvision's keys: of ``ssdlite320_mobilenet_v3_large`` (``ssdlite``:
    ``backbone.features.0`` up to block 13's expansion, ``backbone.features.1`` from its
    depthwise conv on) or of the classifier ``mobilenet_v3_large`` (``features.N``)."""
    blocks = large_blocks(settings.reduced_tail)
    keys: dict = {"stem": conv_norm("backbone.features.0.0" if ssdlite else "features.0")}
    in_channels = STEM_WIDTH
    for i, block in enumerate(blocks, start=1):
        expands = block.expanded != in_channels
        in_channels = block.out
        if not ssdlite:
            keys.update(_block_keys(i, f"features.{i}.block", expands=expands, squeeze_excite=block.squeeze_excite))
        elif i < FIRST_SOURCE_BLOCK:
            keys.update(_block_keys(i, f"backbone.features.0.{i}.block", expands=expands,
                                    squeeze_excite=block.squeeze_excite))
        elif i == FIRST_SOURCE_BLOCK:  # split after its expansion: the first source
            # torchvision slices the block's Sequential, which keeps the layers' indices (from 1).
            keys.update(_block_keys(i, "backbone.features.1.0", expands=True, squeeze_excite=block.squeeze_excite))
            keys[f"b{i}_expand"] = conv_norm(f"backbone.features.0.{i}")
        else:
            keys.update(_block_keys(i, f"backbone.features.1.{i - FIRST_SOURCE_BLOCK}.block", expands=expands,
                                    squeeze_excite=block.squeeze_excite))
    last = len(blocks) + 1
    keys["last"] = conv_norm(f"backbone.features.1.{last - FIRST_SOURCE_BLOCK}" if ssdlite else f"features.{last}")
    return keys


def from_imagenet(state_dict: Mapping) -> dict:
    """torchvision's ImageNet ``mobilenet_v3_large`` (``features.*``; the classifier is ignored)
    -> the ``backbone`` params subtree of ``ssdlite320_mobilenet_v3_large_full``, BatchNorms folded.

    Used as torchvision uses it for SSDLite: the input normalisation stays SSDLite's.
    """
    return state_dicts.import_backbone(state_dict, torchvision_keys(MobileNetV3Settings(), ssdlite=False),
                                       ignore=("classifier.",), bn_eps=BN_EPS)


NETWORK = base_networks.register(base_networks.BaseNetwork(
    settings=MobileNetV3Settings,
    build=lambda settings, **options: MobileNetV3Large(reduced_tail=settings.reduced_tail, **options),
    source_sizes=source_sizes, imagenet_import=from_imagenet))
