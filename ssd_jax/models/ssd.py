"""The SSD network: a base network (``config.backbone``, any registered in
``ssd_jax.models.base_networks``), extra feature layers and the multibox heads (``config.head``:
the paper's 3x3 convolutions or SSDLite's depthwise-separable ones)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.models import base_networks
from ssd_jax.models.layers import conv, conv_act

if TYPE_CHECKING:
    from ssd_jax.configs import SSDConfig


def flatten_head(x, values_per_box: int):
    """Head output [B, H, W, A * K] -> [B, H * W * A, K], in (row, column, box) order."""
    return x.reshape(x.shape[0], -1, values_per_box)


class SSD(nn.Module):
    """images [B, S, S, 3] RGB in [0, 255] -> (locations [B, P, 4], logits [B, P, C]).

    The input is normalised inside ((pixels - mean_rgb) / std_rgb), so the model takes raw
    pixels. Locations are offsets (tx, ty, tw, th) against ``ssd_jax.priors(config)`` with the
    config's variances; logits are raw class scores with class 0 = background. Outputs are
    float32 whatever ``dtype`` (the compute dtype; parameters stay float32).

    ``batch_norm=True`` is the training-time variant with a BatchNorm after the convolutions
    that the design normalises (every one before a ReLU for VGG16 and the plain extra layers;
    those of torchvision's MobileNetV3 / ResNet-50 and SSDLite's layers); ``train`` selects batch
    statistics (and updates the running ones, collection 'batch_stats').
    ``ssd_jax.models.fold_batch_norm`` turns its variables into the parameters of the plain
    model, which is what ``detect`` and the checkpoints use.

    ``gradients`` picks the gradient rules of the convolutions and poolings: "xla" (lax's), or
    the rules of ``ssd_jax.models.fast_grads`` that the training step takes on CPU.
    """

    config: SSDConfig
    dtype: Any = jnp.float32
    batch_norm: bool = False
    gradients: str = "xla"

    @nn.compact
    def __call__(self, images, train: bool = False):
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, 3)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"SSD({cfg.name}) expects images [B, {cfg.image_size}, {cfg.image_size}, 3], "
                             f"got shape {tuple(images.shape)}")
        x = images.astype(jnp.float32) - jnp.asarray(cfg.mean_rgb, jnp.float32)
        if cfg.std_rgb != (1.0, 1.0, 1.0):
            x = x / jnp.asarray(cfg.std_rgb, jnp.float32)
        x = x.astype(self.dtype)

        options = {"batch_norm": self.batch_norm, "dtype": self.dtype, "gradients": self.gradients}
        network = base_networks.of(cfg.backbone)
        sources = list(network.build(cfg.backbone, name="backbone", **options)(x, train))
        x = sources[-1]
        layer = functools.partial(conv_act, dtype=self.dtype, norm=self.batch_norm, train=train,
                                  gradients=self.gradients)
        lite = cfg.head == "lite"
        for i, extra in enumerate(cfg.extras, start=1):
            activation = "relu6" if lite else "relu"
            x = layer(x, extra.mid, 1, activation=activation, name=f"extra{i}_1")
            if lite:  # depthwise on the mid channels, then 1x1 to the output
                x = layer(x, extra.mid, extra.kernel, stride=extra.stride, padding=extra.padding, groups=extra.mid,
                          activation=activation, name=f"extra{i}_dw")
                x = layer(x, extra.out, 1, activation=activation, name=f"extra{i}_2")
            else:
                x = layer(x, extra.out, extra.kernel, stride=extra.stride, padding=extra.padding,
                          activation=activation, name=f"extra{i}_2")
            sources.append(x)

        locations, logits = [], []
        for i, (source, boxes) in enumerate(zip(sources, cfg.boxes_per_location)):
            outputs = []
            for kind, width in (("loc", 4), ("conf", cfg.num_classes)):
                y, kernel, padding = source, 3, 1
                if lite:  # SSDLite: depthwise 3x3 + BatchNorm + ReLU6, then a 1x1 prediction
                    y = layer(y, y.shape[-1], 3, padding=1, groups=y.shape[-1], activation="relu6",
                              name=f"{kind}_{i}_dw")
                    kernel, padding = 1, 0
                outputs.append(conv(boxes * width, kernel, padding=padding, name=f"{kind}_{i}", dtype=self.dtype,
                                    gradients=self.gradients)(y))
            locations.append(flatten_head(outputs[0], 4))
            logits.append(flatten_head(outputs[1], cfg.num_classes))
        return (jnp.concatenate(locations, axis=1).astype(jnp.float32),
                jnp.concatenate(logits, axis=1).astype(jnp.float32))


@functools.partial(jax.jit, static_argnums=1)
def _uniform(rng, size: int):
    return jax.random.uniform(rng, (size,), jnp.float32, -1.0, 1.0)


def init(rng: jax.Array, config: SSDConfig) -> dict:
    """Fresh parameters for ``config``: Xavier-uniform kernels, zero biases, unit gains, and
    L2Norm scales at the base network's ``l2norm_scale`` where its settings have one (else 20).

    Draws the same distributions as the modules' initialisers (``SSD(config).init`` gives
    them too), but from one uniform stream for all kernels: the per-layer random-number code
    that Flax's ``init`` compiles takes seconds on a CPU, this takes milliseconds.
    """
    shapes = param_shapes(config)
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(shapes) if path[-1].key == "kernel"]
    stream = np.asarray(_uniform(rng, int(sum(np.prod(k.shape) for k in kernels))))
    offset = 0

    def fill(path, leaf):
        nonlocal offset
        name = path[-1].key
        if name in ("bias", "shift"):
            return jnp.zeros(leaf.shape, jnp.float32)
        if name == "gain":
            return jnp.ones(leaf.shape, jnp.float32)
        if name == "scale":
            return jnp.full(leaf.shape, getattr(config.backbone, "l2norm_scale", None) or 20.0, jnp.float32)
        size = int(np.prod(leaf.shape))
        receptive = int(np.prod(leaf.shape[:-2]))  # HWIO
        limit = np.sqrt(6.0 / (receptive * (leaf.shape[-2] + leaf.shape[-1])))
        values = stream[offset:offset + size].reshape(leaf.shape) * limit
        offset += size
        return jnp.asarray(values, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def param_shapes(config: SSDConfig) -> dict:
    """The parameter pytree of ``config`` as ``jax.ShapeDtypeStruct`` leaves, without computing it."""
    return variable_shapes(config)["params"]


def variable_shapes(config: SSDConfig, *, batch_norm: bool = False) -> dict:
    """All variable collections of ``SSD(config, batch_norm=batch_norm)`` ('params', and
    'batch_stats' with BatchNorm) as ``jax.ShapeDtypeStruct`` leaves."""
    dummy = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.eval_shape(lambda key, x: SSD(config, batch_norm=batch_norm).init(key, x), jax.random.key(0), dummy)


@functools.lru_cache(maxsize=16)
def _expected_param_shapes(config: SSDConfig) -> dict:
    return {jax.tree_util.keystr(path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(param_shapes(config))}


def check_params(params, config: SSDConfig) -> None:
    """Raises ``ValueError`` naming every parameter that is missing, unexpected or misshapen."""
    expected = _expected_param_shapes(config)
    given = {jax.tree_util.keystr(path): np.shape(leaf)
             for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    problems = [f"missing {k}" for k in expected if k not in given]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [f"{k}: shape {given[k]}, expected {shape}" for k, shape in expected.items()
                 if k in given and tuple(given[k]) != tuple(shape)]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise ValueError(f"params do not fit config {config.name!r} ({config.num_classes} classes): {shown}")
