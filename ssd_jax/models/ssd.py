"""The SSD network: VGG16 base, extra feature layers and the multibox heads."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.configs import SSDConfig
from ssd_jax.models.vgg import VGG16Base, conv


def flatten_head(x, values_per_box: int):
    """Head output [B, H, W, A * K] -> [B, H * W * A, K], in (row, column, box) order."""
    return x.reshape(x.shape[0], -1, values_per_box)


class SSD(nn.Module):
    """images [B, S, S, 3] RGB in [0, 255] -> (locations [B, P, 4], logits [B, P, C]).

    The mean is subtracted inside, so the model takes raw pixels. Locations are offsets
    (tx, ty, tw, th) against ``ssd_jax.priors(config)`` with the config's variances; logits are
    raw class scores with class 0 = background. Outputs are float32 whatever ``dtype`` (the
    compute dtype; parameters stay float32).
    """

    config: SSDConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        cfg = self.config
        expected = (cfg.image_size, cfg.image_size, 3)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"SSD({cfg.name}) expects images [B, {cfg.image_size}, {cfg.image_size}, 3], "
                             f"got shape {tuple(images.shape)}")
        x = images.astype(jnp.float32) - jnp.asarray(cfg.mean_rgb, jnp.float32)
        x = x.astype(self.dtype)

        conv4_3, x = VGG16Base(cfg.backbone_widths, cfg.fc_width, cfg.l2norm_scale, self.dtype,
                               name="backbone")(x)
        sources = [conv4_3, x]
        for i, extra in enumerate(cfg.extras, start=1):
            x = nn.relu(conv(extra.mid, 1, name=f"extra{i}_1", dtype=self.dtype)(x))
            x = nn.relu(conv(extra.out, extra.kernel, stride=extra.stride, padding=extra.padding,
                             name=f"extra{i}_2", dtype=self.dtype)(x))
            sources.append(x)

        locations, logits = [], []
        for i, (source, boxes) in enumerate(zip(sources, cfg.boxes_per_location)):
            loc = conv(boxes * 4, 3, padding=1, name=f"loc_{i}", dtype=self.dtype)(source)
            cls = conv(boxes * cfg.num_classes, 3, padding=1, name=f"conf_{i}", dtype=self.dtype)(source)
            locations.append(flatten_head(loc, 4))
            logits.append(flatten_head(cls, cfg.num_classes))
        return (jnp.concatenate(locations, axis=1).astype(jnp.float32),
                jnp.concatenate(logits, axis=1).astype(jnp.float32))


@functools.lru_cache(maxsize=16)
def _jitted_init(config: SSDConfig):
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.jit(lambda key: SSD(config).init(key, dummy)["params"])


def init(rng: jax.Array, config: SSDConfig) -> dict:
    """Fresh parameters for ``config``: Xavier-uniform weights, zero biases, L2Norm scale 20.

    Jitted so that XLA drops the forward pass that Flax's ``init`` traces; compiled once per
    config and process (several seconds on CPU, mostly the random-number code).
    """
    return _jitted_init(config)(rng)


def param_shapes(config: SSDConfig) -> dict:
    """The parameter pytree of ``config`` as ``jax.ShapeDtypeStruct`` leaves, without computing it."""
    dummy = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.eval_shape(lambda key, x: SSD(config).init(key, x)["params"], jax.random.key(0), dummy)
