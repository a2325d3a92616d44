"""VGG16 base of SSD: conv1_1 .. conv5_3, L2Norm on conv4_3, the reduced fc6/fc7."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssd_jax.configs import VGG16_BLOCK_DEPTHS
from ssd_jax.models.fast_grads import max_pool
from ssd_jax.models.layers import conv_relu


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
