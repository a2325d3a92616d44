"""The layers every SSD module is built of: convolutions with explicit padding, the BatchNorm of
the training-time variant, and conv -> (BatchNorm) -> activation.

Parameters are in the inference form: every convolution has a bias, so a BatchNorm of a trained
or imported network folds into the convolution before it (``ssd_jax.models.fold_batch_norm``).
The ``batch_norm=True`` variant of a model inserts a BatchNorm named ``<conv> + BATCH_NORM_SUFFIX``
after each convolution that is followed by one in the network's design.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.fast_grads import conv_for

# Xavier-uniform weights and zero biases, as the reference SSD initialises its new layers.
kernel_init = nn.initializers.xavier_uniform()

BATCH_NORM_MOMENTUM = 0.9  # short schedules: the running averages must follow the weights quickly
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_SUFFIX = "_bn"  # a BatchNorm is named after its convolution, plus this

ACTIVATIONS: dict[str, Callable | None] = {
    "relu": nn.relu,
    "relu6": jax.nn.relu6,
    "hardswish": jax.nn.hard_swish,  # x * relu6(x + 3) / 6
    "none": None,
}


def conv(features: int, kernel: int, *, name: str, dtype: Any, stride: int = 1, padding: int = 0,
         dilation: int = 1, groups: int = 1, gradients: str = "xla") -> nn.Conv:
    """A square NHWC convolution with explicit symmetric padding (Caffe/PyTorch semantics);
    ``groups`` = input channels makes it depthwise; ``gradients`` picks its gradient rule
    (``ssd_jax.models.fast_grads``)."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_for(gradients),
        name=name,
    )


def batch_norm(x, name: str, *, train: bool):
    """The BatchNorm that ``batch_norm=True`` models put after a convolution ``name``, named
    ``name + BATCH_NORM_SUFFIX`` (``fold_batch_norm`` relies on the name). Statistics of the
    batch in training (the global batch, when sharded over devices), running averages otherwise."""
    return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                        dtype=jnp.float32, name=name + BATCH_NORM_SUFFIX)(x)


def conv_act(x, features: int, kernel: int, *, name: str, dtype: Any, norm: bool, train: bool,
             activation: str = "relu", **options):
    """conv -> (BatchNorm if ``norm``) -> ``activation`` (a name of ``ACTIVATIONS``)."""
    x = conv(features, kernel, name=name, dtype=dtype, **options)(x)
    if norm:
        x = batch_norm(x, name, train=train).astype(dtype)
    act = ACTIVATIONS[activation]
    return x if act is None else act(x)


def conv_relu(x, features: int, kernel: int, **options):
    """conv -> (BatchNorm if ``norm``) -> ReLU."""
    return conv_act(x, features, kernel, activation="relu", **options)
