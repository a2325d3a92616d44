"""Convolution and max pooling whose gradients XLA:CPU computes fast.

Two gradients are slow in XLA:CPU (measured on SSD300's and ssd_tiny's layers, 2 cores):
- a convolution's gradient with respect to its kernel takes 3 to 14 times as long as the
  convolution (the gradient with respect to the input is as fast as the forward);
- max pooling's gradient (select-and-scatter) takes 6 to 25 times as long as the pooling.

Here these layers carry their own gradients (``jax.custom_vjp``): the kernel gradient of a
convolution is one matrix product per kernel tap, (shifted input window)^T @ (output gradient),
and max pooling sends each output's gradient to the first maximum of its window (the element
XLA's select-and-scatter picks) with elementwise selects and pads. Both keep only the layer's
inputs for the backward pass. Values and gradients equal lax's (tested).

The rules are a choice of whoever builds the model (``SSD(config, gradients=...)``): "xla"
(plain lax, the default; forward-mode differentiation works), "fast" (both rules: the training
step's choice on CPU) or "fast_pool" (the pooling rule alone). ``jax.jvp`` is not available
through a custom rule.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
# For kernels with at most this many (input x output) channels XLA's own kernel gradient is the
# faster one on a CPU (ssd_tiny's first layers); above it the per-tap products win (the figures:
# benchmarks/RESULTS.md).
SMALL_KERNEL_CHANNELS = 128


GRADIENTS = ("xla", "fast", "fast_pool")


def training_gradients(backend: str | None = None) -> str:
    """The gradient rules that train fastest on ``backend`` (default: JAX's default backend).

    Both rules on a CPU, where XLA's kernel and pooling gradients are the slow ones; on a GPU the
    pooling rule alone, since cuDNN's kernel gradients are fast and XLA's select-and-scatter is
    not (the measurements: benchmarks/RESULTS.md).
    """
    backend = backend or jax.default_backend()
    return {"cpu": "fast", "gpu": "fast_pool", "cuda": "fast_pool", "rocm": "fast_pool"}.get(backend, "xla")


def check_gradients(gradients: str) -> None:
    if gradients not in GRADIENTS:
        raise ValueError(f"gradients must be one of {GRADIENTS}, got {gradients!r}")


def conv_for(gradients: str):
    """The ``conv_general_dilated`` of ``flax.linen.Conv`` for ``gradients`` (depthwise
    convolutions on a CPU as taps, whatever ``gradients``: see ``depthwise_as_taps``)."""
    check_gradients(gradients)
    inner = conv_general_dilated if gradients == "fast" else lax.conv_general_dilated
    return functools.partial(depthwise_as_taps, inner=inner)


_TAPS = {"enabled": True}


@contextlib.contextmanager
def native_depthwise():
    """Within this block depthwise convolutions are traced as lax's grouped convolution even on a
    CPU: exported models keep the native depthwise op of their runtime (TFLite, ONNX)."""
    saved = _TAPS["enabled"]
    _TAPS["enabled"] = False
    try:
        yield
    finally:
        _TAPS["enabled"] = saved


def depthwise_as_taps(lhs, rhs, window_strides, padding, *, inner=lax.conv_general_dilated, lhs_dilation=None,
                      rhs_dilation=None, dimension_numbers=None, feature_group_count=1, precision=None,
                      preferred_element_type=None):
    """A ``conv_general_dilated`` that computes NHWC depthwise convolutions (one group per
    channel, one output per channel) on a CPU as a sum of kernel taps, each a strided window of
    the padded input times that tap's weights, and passes everything else to ``inner``.

    XLA:CPU runs a grouped convolution with one channel per group 10 to 20 times slower per
    FLOP than a dense one (SSDLite's network was 2x slower than torchvision's on 2 cores); the
    taps fuse into one elementwise loop, forward and backward.
    """
    depthwise = (_TAPS["enabled"] and jax.default_backend() == "cpu" and lhs.ndim == 4 and not isinstance(padding, str)
                 and feature_group_count > 1 and feature_group_count == lhs.shape[-1] == rhs.shape[-1]
                 and rhs.shape[2] == 1 and all(d == 1 for d in (lhs_dilation or (1, 1)))
                 and precision is None and preferred_element_type is None
                 and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))
    if not depthwise:
        return inner(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                     dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                     precision=precision, preferred_element_type=preferred_element_type)
    padded = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    kh, kw = rhs.shape[:2]
    taps = _windows(padded, (kh, kw), tuple(window_strides), tuple(rhs_dilation or (1, 1)))
    # Summed in float32 and rounded once, as a convolution accumulates (bfloat16 inputs too).
    weights = rhs.reshape(kh * kw, rhs.shape[-1]).astype(jnp.float32)
    total = sum(window.astype(jnp.float32) * weights[i] for i, window in enumerate(taps))
    return total.astype(jnp.result_type(lhs.dtype, rhs.dtype))


# ----------------------------------------------------------------------------- convolution
def conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         preferred_element_type=None):
    """Drop-in for ``lax.conv_general_dilated`` (the ``conv_general_dilated`` of ``flax.linen.Conv``).

    NHWC convolutions with explicit padding, no input dilation, one feature group and more
    than ``SMALL_KERNEL_CHANNELS`` (input x output) channels take the fast kernel gradient;
    everything else is passed to lax as it is.
    """
    plain = (lhs.ndim == 4 and not isinstance(padding, str)
             and all(p >= 0 for pair in padding for p in pair)
             and all(d == 1 for d in (lhs_dilation or (1, 1))) and feature_group_count == 1
             and precision is None and preferred_element_type is None
             and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
             and rhs.shape[2] * rhs.shape[3] > SMALL_KERNEL_CHANNELS)
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision,
                                        preferred_element_type=preferred_element_type)
    return conv_nhwc(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding),
                     tuple(rhs_dilation or (1, 1)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_nhwc(x, kernel, strides, padding, dilation):
    """x [B, H, W, Cin] (*) kernel [kh, kw, Cin, Cout] -> [B, Ho, Wo, Cout], as lax computes it.

    padding: ((top, bottom), (left, right)); strides, dilation: (y, x).
    """
    return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC)


def _conv_nhwc_fwd(x, kernel, strides, padding, dilation):
    return conv_nhwc(x, kernel, strides, padding, dilation), (x, kernel)


def _conv_nhwc_bwd(strides, padding, dilation, residuals, g):
    x, kernel = residuals
    # The input gradient is XLA's own (as fast as the forward); only the kernel gradient differs.
    (x_grad,) = jax.linear_transpose(
        lambda x: lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
                                           dimension_numbers=NHWC), x)(g)
    return x_grad, kernel_gradient(x, g, kernel.shape, strides, padding, dilation)


conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def kernel_gradient(x, g, kernel_shape, strides, padding, dilation):
    """d(sum(conv(x, kernel) * g)) / d kernel -> [kh, kw, Cin, Cout], as one matrix product per tap.

    Tap (i, j) of the kernel meets the input window shifted by (i, j) * dilation, so its
    gradient is window_ij^T @ g: [Cin, B*Ho*Wo] x [B*Ho*Wo, Cout], at matmul speed.
    """
    kh, kw, cin, cout = kernel_shape
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    g_matrix = g.reshape(-1, cout)
    taps = [window.reshape(-1, cin).T @ g_matrix for window in _windows(padded, (kh, kw), strides, dilation)]
    return jnp.stack(taps).reshape(kernel_shape).astype(x.dtype)


def _windows(padded, window, strides, dilation=(1, 1)) -> list:
    """The kh*kw strided views of ``padded`` [B, H, W, C] that a window op combines, tap (i, j) at
    index i * kw + j; each [B, Ho, Wo, C]."""
    batch, height, width, channels = padded.shape
    out_h = (height - dilation[0] * (window[0] - 1) - 1) // strides[0] + 1
    out_w = (width - dilation[1] * (window[1] - 1) - 1) // strides[1] + 1
    views = []
    for i in range(window[0]):
        for j in range(window[1]):
            top, left = i * dilation[0], j * dilation[1]
            views.append(lax.slice(padded, (0, top, left, 0),
                                   (batch, top + (out_h - 1) * strides[0] + 1,
                                    left + (out_w - 1) * strides[1] + 1, channels),
                                   (1, strides[0], strides[1], 1)))
    return views


# ----------------------------------------------------------------------------- max pooling
def max_pool(x, window: int, stride: int, padding=((0, 0), (0, 0)), *, gradients: str = "fast"):
    """Square max pooling of x [B, H, W, C]; ``padding`` ((top, bottom), (left, right)) adds -inf.

    With ``gradients`` "fast" or "fast_pool" the gradient is this module's rule, else lax's.
    """
    check_gradients(gradients)
    padding = tuple(tuple(p) for p in padding)
    if gradients != "xla":
        return _max_pool_cpu(x, window, stride, padding)
    pads = ((0, 0), *padding, (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


def _padded_for_pooling(x, padding):
    return jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, window, stride, padding):
    views = _windows(_padded_for_pooling(x, padding), (window, window), (stride, stride))
    return functools.reduce(jnp.maximum, views)


def _max_pool_cpu_fwd(x, window, stride, padding):
    y = _max_pool_cpu(x, window, stride, padding)
    return y, (x, y)


def _max_pool_cpu_bwd(window, stride, padding, residuals, g):
    """Each output's gradient goes to the first maximum of its window, in row-major tap order."""
    x, y = residuals
    padded = _padded_for_pooling(x, padding)
    _, height, width, _ = padded.shape
    out_h, out_w = y.shape[1:3]
    taken = jnp.zeros(y.shape, bool)
    grad = jnp.zeros(padded.shape, g.dtype)
    zero = jnp.zeros((), g.dtype)
    for tap, view in enumerate(_windows(padded, (window, window), (stride, stride))):
        i, j = divmod(tap, window)
        first_max = (view == y) & ~taken
        taken = taken | first_max
        # Back to the padded input's grid: tap offset, then stride - 1 zeros between outputs.
        spread = ((0, 0, 0), (i, height - i - (out_h - 1) * stride - 1, stride - 1),
                  (j, width - j - (out_w - 1) * stride - 1, stride - 1), (0, 0, 0))
        grad = grad + lax.pad(jnp.where(first_max, g, zero), zero, spread)
    (top, bottom), (left, right) = padding
    return (grad[:, top:height - bottom, left:width - right, :],)


_max_pool_cpu.defvjp(_max_pool_cpu_fwd, _max_pool_cpu_bwd)
