"""MobileNetV3-Large (Howard et al., 2019) as the base of SSDLite, laid out as torchvision's.

Layer names follow torchvision's ``mobilenet_v3_large().features`` so that its weights map one
to one: ``stem`` (features.0), ``b{i}_expand`` / ``b{i}_dw`` / ``b{i}_se_reduce`` /
``b{i}_se_expand`` / ``b{i}_project`` for the inverted-residual block features.{i} (i = 1 .. 15),
``last`` (features.16).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.layers import conv, conv_act


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
