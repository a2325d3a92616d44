"""A network imported from Caffe, run layer by layer: the base network of Caffe SSD models.

Its settings (``CaffeNetSettings``) are the layer graph that ``ssd_jax.caffe`` reads from a
deploy prototxt, with BatchNorm and Scale already folded into the convolutions they follow, so
what remains is a short list of kinds. Parameters are named after the Caffe layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ssd_jax.models import base_networks, fast_grads
from ssd_jax.models.layers import conv

LAYER_KINDS = ("conv", "affine", "relu", "max_pool", "avg_pool", "eltwise_sum", "normalize", "concat")


@dataclasses.dataclass(frozen=True)
class CaffeLayer:
    """One layer of a network imported from Caffe. ``inputs`` and ``output`` name blob versions (a
    blob written in place gets a new version). Kinds: conv (``features``, ``kernel``, ``stride``,
    ``pad``, ``dilation``, ``groups``), affine (per-channel gain and shift: BatchNorm and Scale
    that could not fold into a convolution), relu (``slope`` for negative inputs), max_pool and
    avg_pool (Caffe's rounding up; ``kernel`` 0: global), eltwise_sum, normalize (L2 across
    channels, learned scale, ``eps``), concat (channels)."""

    kind: str
    name: str
    inputs: tuple[str, ...]
    output: str
    features: int = 0
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    groups: int = 1
    slope: float = 0.0
    eps: float = 0.0


def output_size(layer: CaffeLayer, size: int) -> int:
    """Spatial size of ``layer``'s output for an input of ``size``: convolutions round down,
    Caffe's pooling rounds up (but never starts a window in the bottom/right padding)."""
    if layer.kind == "conv":
        return (size + 2 * layer.pad - layer.dilation * (layer.kernel - 1) - 1) // layer.stride + 1
    if layer.kind in ("max_pool", "avg_pool"):
        if layer.kernel == 0:
            return 1
        out = -(-(size + 2 * layer.pad - layer.kernel) // layer.stride) + 1
        if layer.pad and (out - 1) * layer.stride >= size + layer.pad:
            out -= 1
        return out
    return size


def blob_sizes(layers: tuple[CaffeLayer, ...], input_blob: str, image_size: int) -> dict[str, int]:
    """Spatial size of every blob version of an imported Caffe network."""
    sizes = {input_blob: image_size}
    for layer in layers:
        sizes[layer.output] = output_size(layer, sizes[layer.inputs[0]])
    return sizes


@dataclasses.dataclass(frozen=True)
class CaffeNetSettings:
    """An imported Caffe network: its layers in order, its input blob and the blobs the heads read."""

    kind: ClassVar[str] = "caffe"
    layers: tuple[CaffeLayer, ...]
    sources: tuple[str, ...]
    input_blob: str = "data"

    def __post_init__(self):
        known = {self.input_blob}
        for layer in self.layers:
            if layer.kind not in LAYER_KINDS:
                raise ValueError(f"Caffe layer {layer.name!r} has unknown kind {layer.kind!r}")
            missing = [blob for blob in layer.inputs if blob not in known]
            if missing or not layer.inputs:
                raise ValueError(f"Caffe layer {layer.name!r} reads {missing or 'nothing'}, not written before it")
            known.add(layer.output)
        if not self.sources or any(source not in known for source in self.sources):
            raise ValueError(f"Caffe network: sources {self.sources} must name blobs of its layers")

    @classmethod
    def from_dict(cls, values: dict) -> CaffeNetSettings:
        layers = tuple(CaffeLayer(**{k: tuple(v) if isinstance(v, list) else v for k, v in layer.items()})
                       for layer in values["layers"])
        return cls(layers=layers, sources=tuple(values["sources"]), input_blob=values.get("input_blob", "data"))


class Affine(nn.Module):
    """x * gain + shift per channel (a BatchNorm and/or Scale that follows no convolution)."""

    @nn.compact
    def __call__(self, x):
        gain = self.param("gain", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        shift = self.param("shift", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return (x * gain + shift).astype(x.dtype)


class Normalize(nn.Module):
    """Caffe's Normalize (across channels): x / sqrt(sum of squares + eps) * scale per channel."""

    eps: float = 1e-10

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.constant(20.0), (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 / norm * scale).astype(x.dtype)


def caffe_pool(x, layer: CaffeLayer, out_size: int, *, gradients: str = "xla"):
    """Caffe's max or average pooling of x [B, H, W, C] (H = W), ``out_size`` from its rounding up.

    The windows past the bottom/right edge that rounding up adds see -inf (max) or count nothing
    (average); an average divides by the window clipped to the padded image, as Caffe does.
    ``gradients``: max pooling's gradient rule (``fast_grads.max_pool``; "fast" and "fast_pool"
    also compute it as slices and maxima, which every exported runtime runs).
    """
    size = x.shape[1]
    kernel, stride, pad = (size, 1, 0) if layer.kernel == 0 else (layer.kernel, layer.stride, layer.pad)
    extra = max(0, (out_size - 1) * stride + kernel - (size + 2 * pad))
    window, strides = (1, kernel, kernel, 1), (1, stride, stride, 1)
    padding = ((0, 0), (pad, pad + extra), (pad, pad + extra), (0, 0))
    if layer.kind == "max_pool":
        return fast_grads.max_pool(x, kernel, stride, padding[1:3], gradients=gradients)
    total = lax.reduce_window(x.astype(jnp.float32), 0.0, lax.add, window, strides, padding)
    inside = jnp.pad(jnp.ones((1, size + 2 * pad, size + 2 * pad, 1), jnp.float32),
                     ((0, 0), (0, extra), (0, extra), (0, 0)))
    count = lax.reduce_window(inside, 0.0, lax.add, window, strides, ((0, 0),) * 4)
    return (total / count).astype(x.dtype)


class CaffeNet(nn.Module):
    """normalised images [B, S, S, 3] -> the blobs named by ``sources``, NHWC."""

    layers: tuple[CaffeLayer, ...]
    sources: tuple[str, ...]
    input_blob: str = "data"
    dtype: Any = jnp.float32
    gradients: str = "xla"
    batch_norm: bool = False  # imported networks run with their BatchNorms folded

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        sizes = blob_sizes(self.layers, self.input_blob, x.shape[1])
        blobs = {self.input_blob: x}
        for layer in self.layers:
            inputs = [blobs[name] for name in layer.inputs]
            if layer.kind == "conv":
                y = conv(layer.features, layer.kernel, stride=layer.stride, padding=layer.pad,
                         dilation=layer.dilation, groups=layer.groups, name=layer.name, dtype=self.dtype,
                         gradients=self.gradients)(inputs[0])
            elif layer.kind == "affine":
                y = Affine(name=layer.name)(inputs[0])
            elif layer.kind == "relu":
                y = jnp.where(inputs[0] > 0, inputs[0], inputs[0] * layer.slope) if layer.slope else nn.relu(inputs[0])
            elif layer.kind in ("max_pool", "avg_pool"):
                y = caffe_pool(inputs[0], layer, sizes[layer.output], gradients=self.gradients)
            elif layer.kind == "eltwise_sum":
                y = sum(inputs[1:], inputs[0])
            elif layer.kind == "normalize":
                y = Normalize(eps=layer.eps, name=layer.name)(inputs[0])
            elif layer.kind == "concat":
                y = jnp.concatenate(inputs, axis=-1)
            else:
                raise ValueError(f"Caffe layer {layer.name!r}: unknown kind {layer.kind!r}")
            blobs[layer.output] = y
        return [blobs[name] for name in self.sources]




NETWORK = base_networks.register(base_networks.BaseNetwork(
    settings=CaffeNetSettings,
    build=lambda settings, **options: CaffeNet(layers=settings.layers, sources=settings.sources,
                                               input_blob=settings.input_blob, **options),
    source_sizes=lambda settings, image_size: [blob_sizes(settings.layers, settings.input_blob, image_size)[source]
                                               for source in settings.sources]))
