"""ResNet-50 (He et al., 2016) up to conv4_x as the base of SSD300, the way NVIDIA's
DeepLearningExamples SSD builds it: conv5_x removed and conv4_x's first block at stride 1, so
that its output (1024 channels) is a 38x38 map for a 300-pixel input.

Bottlenecks as torchvision's ``resnet50`` (the stride on the 3x3 convolution, "v1.5"). Layer
names follow its state dict: ``conv1``, ``layer{l}_{b}_conv{1,2,3}``, ``layer{l}_{b}_downsample``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssd_jax.models.fast_grads import max_pool
from ssd_jax.models.layers import conv_act

# (blocks, bottleneck width, stride of the first block) of conv2_x, conv3_x, conv4_x; conv4_x's
# stride is 1 in the SSD variant (2 in the classifier).
RESNET50_LAYERS = ((3, 64, 1), (4, 128, 2), (6, 256, 1))
EXPANSION = 4


class ResNet50Base(nn.Module):
    """[B, S, S, 3] normalised RGB -> [conv4_x output, 1024 channels at S/8 (38 for 300)].

    BatchNorm after every convolution when ``batch_norm`` (folded into the convolutions otherwise).
    """

    batch_norm: bool = False
    dtype: Any = jnp.float32
    gradients: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool = False):
        layer = functools.partial(conv_act, dtype=self.dtype, norm=self.batch_norm, train=train,
                                  gradients=self.gradients)
        x = layer(x, 64, 7, stride=2, padding=3, name="conv1")
        x = max_pool(x, 3, 2, ((1, 1), (1, 1)), gradients=self.gradients)
        for index, (blocks, width, first_stride) in enumerate(RESNET50_LAYERS, start=1):
            for block in range(blocks):
                name = f"layer{index}_{block}"
                stride = first_stride if block == 0 else 1
                shortcut = x
                if block == 0:
                    shortcut = layer(x, width * EXPANSION, 1, stride=stride, activation="none",
                                     name=f"{name}_downsample")
                y = layer(x, width, 1, name=f"{name}_conv1")
                y = layer(y, width, 3, stride=stride, padding=1, name=f"{name}_conv2")
                y = layer(y, width * EXPANSION, 1, activation="none", name=f"{name}_conv3")
                x = nn.relu(y + shortcut)
        return [x]
