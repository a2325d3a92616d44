"""Training with BatchNorm, detecting without: the variables of the BatchNorm model and the fold.

SSD trained from scratch (no ImageNet backbone) learns much faster with a BatchNorm before every
ReLU of the base and the extra layers (as in ScratchDet, Zhu et al. 2019). The public model has
no batch statistics, and ``params`` is its whole state. So the BatchNorms exist only while
training: ``fold_batch_norm`` merges each one into the convolution before it. The plain
``SSD(config)`` with the folded parameters then computes what ``SSD(config, batch_norm=True)``
computes in evaluation mode (tested), and ``detect``, checkpoints and weight files stay as they
are.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from ssd_jax.models.layers import BATCH_NORM_EPSILON
from ssd_jax.models.layers import BATCH_NORM_SUFFIX as SUFFIX
from ssd_jax.models.ssd import variable_shapes

if TYPE_CHECKING:
    from ssd_jax.configs import SSDConfig


def init_batch_norm(params, config: SSDConfig) -> tuple[dict, dict]:
    """Parameters of the plain model -> (params, batch_stats) of ``SSD(config, batch_norm=True)``.

    The convolutions keep their values; each BatchNorm starts as the identity: scale 1, bias 0,
    running mean 0 and running variance 1.
    """
    shapes = variable_shapes(config, batch_norm=True)

    def fill(path, leaf):
        keys = [entry.key for entry in path]
        if any(key.endswith(SUFFIX) for key in keys):
            return jnp.full(leaf.shape, 1.0 if keys[-1] in ("scale", "var") else 0.0, leaf.dtype)
        return jnp.asarray(functools.reduce(lambda tree, key: tree[key], keys, params))

    return (jax.tree_util.tree_map_with_path(fill, shapes["params"]),
            jax.tree_util.tree_map_with_path(fill, shapes["batch_stats"]))


def fold_batch_norm(params: Mapping, batch_stats: Mapping) -> dict:
    """(params, batch_stats) of ``SSD(config, batch_norm=True)`` -> params of ``SSD(config)``.

    With f = scale / sqrt(running variance + eps) per output channel, a convolution followed by
    its BatchNorm is the convolution with kernel [kh, kw, Cin, Cout] * f and bias
    (bias - running mean) * f + BatchNorm bias. Pure array arithmetic: works inside jit.
    """
    folded = {}
    for name, value in params.items():
        if name.endswith(SUFFIX):
            continue
        norm = params.get(name + SUFFIX)
        if norm is not None:
            stats = batch_stats[name + SUFFIX]
            factor = norm["scale"] / jnp.sqrt(stats["var"] + BATCH_NORM_EPSILON)
            folded[name] = {"kernel": value["kernel"] * factor,
                            "bias": (value["bias"] - stats["mean"]) * factor + norm["bias"]}
        elif name in batch_stats:  # a submodule holding BatchNorms (the VGG base)
            folded[name] = fold_batch_norm(value, batch_stats[name])
        else:
            folded[name] = value
    return folded
