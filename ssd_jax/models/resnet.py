"""ResNet-50 (He et al., 2016) up to conv4_x as the base of SSD300, the way NVIDIA's
DeepLearningExamples SSD builds it: conv5_x removed and conv4_x's first block at stride 1, so
that its output (1024 channels) is a 38x38 map for a 300-pixel input.

Bottlenecks as torchvision's ``resnet50`` (the stride on the 3x3 convolution, "v1.5"). Layer
names follow its state dict: ``conv1``, ``layer{l}_{b}_conv{1,2,3}``, ``layer{l}_{b}_downsample``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from ssd_jax import state_dicts
from ssd_jax.models import base_networks
from ssd_jax.models.fast_grads import max_pool
from ssd_jax.models.layers import conv_act

# (blocks, bottleneck width, stride of the first block) of conv2_x, conv3_x, conv4_x; conv4_x's
# stride is 1 in the SSD variant (2 in the classifier).
RESNET50_LAYERS = ((3, 64, 1), (4, 128, 2), (6, 256, 1))
EXPANSION = 4


@dataclasses.dataclass(frozen=True)
class ResNet50Settings:
    """ResNet-50 to conv4_x has no settings of its own: the layers are torchvision's."""

    kind: ClassVar[str] = "resnet50"


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


def source_sizes(settings: ResNet50Settings, image_size: int) -> list[int]:
    """conv1 7x7/2/pad 3, max pool 3x3/2/pad 1, conv3_x's stride 2; conv4_x keeps the size."""
    del settings

    def out(size, kernel, stride, padding):
        return (size + 2 * padding - kernel) // stride + 1

    return [out(out(out(image_size, 7, 2, 3), 3, 2, 1), 3, 2, 1)]


def torchvision_keys(*, stem: tuple[str, str] = ("conv1", "bn1"),
                     layers: tuple[str, ...] = ("layer1", "layer2", "layer3")) -> dict[str, state_dicts.ConvBN]:
    """Our layer names -> torchvision's ``resnet50`` keys (each convolution with its BatchNorm):
    ``stem`` its conv1 and bn1, ``layers`` the modules of conv2_x .. conv4_x (``layer1``.. by
    default; NVIDIA's SSD300 nests them as ``feature_extractor.feature_extractor.4`` ..)."""
    keys = {"conv1": state_dicts.ConvBN(*stem)}
    for index, (blocks, _, _) in enumerate(RESNET50_LAYERS):
        for block in range(blocks):
            prefix, name = f"{layers[index]}.{block}", f"layer{index + 1}_{block}"
            for k in (1, 2, 3):
                keys[f"{name}_conv{k}"] = state_dicts.ConvBN(f"{prefix}.conv{k}", f"{prefix}.bn{k}")
            if block == 0:
                keys[f"{name}_downsample"] = state_dicts.ConvBN(f"{prefix}.downsample.0", f"{prefix}.downsample.1")
    return keys


def from_imagenet(state_dict: Mapping) -> dict:
    """torchvision's ImageNet ``resnet50`` -> the ``backbone`` params subtree of ``ssd300_resnet50``
    (conv1 .. conv4_x, BatchNorms folded; ``layer4`` and ``fc`` are not part of it)."""
    return state_dicts.import_backbone(state_dict, torchvision_keys(), ignore=("layer4.", "fc."), bn_eps=1e-5)


NETWORK = base_networks.register(base_networks.BaseNetwork(
    settings=ResNet50Settings, build=lambda settings, **options: ResNet50Base(**options),
    source_sizes=source_sizes, imagenet_import=from_imagenet))
