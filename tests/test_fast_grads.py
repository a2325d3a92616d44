"""The CPU derivative rules of convolution and max pooling give lax's values and gradients."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssd_jax.models import fast_grads

# (input [B, H, W, Cin], kernel, stride, padding, dilation, Cout): the layer kinds of SSD.
CONV_CASES = [
    ((2, 11, 11, 5), 3, 1, 1, 1, 7),   # VGG 3x3
    ((2, 19, 19, 8), 3, 1, 6, 6, 6),   # fc6: dilation 6
    ((2, 10, 10, 4), 1, 1, 0, 1, 3),   # fc7 / extras: 1x1
    ((2, 10, 10, 4), 3, 2, 1, 1, 6),   # extras: stride 2
    ((1, 9, 13, 3), 3, 1, 0, 1, 4),    # extras: no padding, not square
]


def lax_conv(x, kernel, stride, padding, dilation):
    return lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
                                    rhs_dilation=(dilation, dilation), dimension_numbers=fast_grads.NHWC)


@pytest.mark.parametrize("shape, k, stride, padding, dilation, cout", CONV_CASES)
def test_conv_values_and_gradients_equal_lax(shape, k, stride, padding, dilation, cout):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    kernel = jax.random.normal(kk, (k, k, shape[-1], cout))
    ours = lambda x, w: fast_grads.conv_nhwc(x, w, (stride, stride), ((padding, padding),) * 2,  # noqa: E731
                                             (dilation, dilation))
    theirs = lambda x, w: lax_conv(x, w, stride, padding, dilation)  # noqa: E731
    y = theirs(x, kernel)
    np.testing.assert_array_equal(ours(x, kernel), y)
    cotangent = jax.random.normal(kg, y.shape)
    grads = [jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) * cotangent), argnums=(0, 1)))(x, kernel)
             for f in (ours, theirs)]
    for got, expected in zip(*grads):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max()))
    # The kernel gradient really takes the matmul path: one convolution fewer than lax's.
    convolutions = [jax.jit(jax.grad(lambda w, f=f: jnp.sum(f(x, w) * cotangent))).lower(kernel).as_text()
                    .count("stablehlo.convolution") for f in (ours, theirs)]
    assert convolutions[0] < convolutions[1], convolutions


def test_bfloat16_gradients_are_close_to_lax():
    x = jax.random.normal(jax.random.key(1), (2, 10, 10, 16), jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 16, 8), jnp.bfloat16)

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) ** 2)

    ours = jax.grad(loss(lambda x, w: fast_grads.max_pool(
        fast_grads.conv_nhwc(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1)), 3, 1, ((1, 1), (1, 1)))),
        argnums=(0, 1))(x, kernel)
    theirs = jax.grad(loss(lambda x, w: nn.max_pool(lax_conv(x, w, 1, 1, 1), (3, 3), padding=((1, 1), (1, 1)))),
                      argnums=(0, 1))(x, kernel)
    for got, expected in zip(ours, theirs):
        assert got.dtype == jnp.bfloat16
        error = jnp.abs(got.astype(jnp.float32) - expected.astype(jnp.float32)).max()
        assert float(error) <= 0.02 * float(jnp.abs(expected.astype(jnp.float32)).max())


def test_the_model_takes_the_fast_path_only_where_it_applies():
    from ssd_jax import configs
    from ssd_jax.models import SSD, init

    config = configs.ssd_tiny(num_classes=3)
    images = jnp.zeros((1, config.image_size, config.image_size, 3))
    params = init(jax.random.key(0), config)
    plain = str(jax.make_jaxpr(lambda p: SSD(config).apply({"params": p}, images))(params))
    assert "custom_vjp_call" not in plain  # the default model is plain lax, whatever the backend
    pools = str(jax.make_jaxpr(lambda p: SSD(config, gradients="fast_pool").apply({"params": p}, images))(params))
    assert pools.count("custom_vjp_call") == 5
    jaxpr = str(jax.make_jaxpr(lambda p: SSD(config, gradients="fast").apply({"params": p}, images))(params))
    # Every convolution (the base, fc6, fc7, 2 per extra layer, 2 per source) and every pooling (5) goes
    # through the CPU rules (flax's dimension numbers are the ones the fast path expects), except the
    # small kernels (conv1_1 3 -> 8, conv2_1 8 -> 16), whose gradient XLA computes faster itself.
    convolutions = sum(config.backbone.depths) + 2 + 2 * len(config.extras) + 2 * len(config.feature_map_sizes)
    kernels = [k for k in jax.tree.leaves(params) if k.ndim == 4]
    assert len(kernels) == convolutions
    small = sum(k.shape[2] * k.shape[3] <= fast_grads.SMALL_KERNEL_CHANNELS for k in kernels)
    assert small == 2
    assert jaxpr.count("custom_vjp_call") == convolutions - small + 5
    x = jnp.ones((1, 6, 6, 2))
    kernel = jnp.ones((3, 3, 1, 2))
    numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, fast_grads.NHWC)
    # A grouped convolution is passed to lax unchanged (no custom rule).
    grouped = jax.make_jaxpr(lambda x: fast_grads.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers, feature_group_count=2))(x)
    assert "custom_vjp_call" not in str(grouped) and "feature_group_count=2" in str(grouped)


# (input shape, window, stride, padding): pools 1-4 (2x2/2, pool3 with ceil mode) and pool5 (3x3/1).
POOL_CASES = [
    ((2, 8, 8, 3), 2, 2, ((0, 0), (0, 0))),
    ((2, 7, 9, 3), 2, 2, ((0, 1), (0, 1))),
    ((2, 6, 6, 4), 3, 1, ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("shape, window, stride, padding", POOL_CASES)
def test_max_pool_values_and_gradients_equal_lax(shape, window, stride, padding):
    # After a ReLU many inputs tie at 0: the gradient must go to the same element as lax's.
    x = jnp.maximum(jax.random.normal(jax.random.key(0), shape), 0.0)
    x = x.at[0, 0, :2, 0].set(1.0)  # an exact tie between two positive values too
    ours = lambda x: fast_grads.max_pool(x, window, stride, padding)  # noqa: E731
    theirs = lambda x: nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding)  # noqa: E731
    y = theirs(x)
    np.testing.assert_array_equal(ours(x), y)
    cotangent = jax.random.normal(jax.random.key(1), y.shape)
    got, expected = (jax.jit(jax.grad(lambda x, f=f: jnp.sum(f(x) * cotangent)))(x) for f in (ours, theirs))
    np.testing.assert_array_equal(got != 0, expected != 0)  # the same elements receive gradient
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)  # summed in another order where windows overlap


def test_forward_mode_through_the_default_model():
    from ssd_jax import configs
    from ssd_jax.models import SSD, init

    config = configs.ssd_tiny(num_classes=3)
    images = jax.random.uniform(jax.random.key(2), (1, config.image_size, config.image_size, 3), maxval=255.0)
    params = init(jax.random.key(0), config)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    tangent = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    apply = lambda p: SSD(config).apply({"params": p}, images)[1]  # noqa: E731
    # Compiled: op by op, forward and reverse mode through the model dispatch thousands of kernels.
    logits, d_logits = jax.jit(lambda p, t: jax.jvp(apply, (p,), (t,)))(params, tangent)
    # Forward mode agrees with reverse mode: <u, J t> == <J^T u, t> for a random u.
    u = jax.random.normal(jax.random.key(4), logits.shape)
    (pullback,) = jax.jit(lambda p, u: jax.vjp(apply, p)[1](u))(params, u)
    forward = float(jnp.vdot(u, d_logits))
    reverse = float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(pullback), jax.tree.leaves(tangent))))
    assert abs(forward - reverse) <= 1e-4 * abs(reverse)
    with pytest.raises(TypeError):  # a custom rule has no forward mode: that is why it is opt-in
        jax.jvp(lambda p: SSD(config, gradients="fast").apply({"params": p}, images), (params,), (tangent,))


def test_training_gradients_follow_the_device():
    assert fast_grads.training_gradients("cpu") == "fast"
    assert fast_grads.training_gradients("gpu") == "fast_pool"
    assert fast_grads.training_gradients("tpu") == "xla"
    with pytest.raises(ValueError, match="gradients must be one of"):
        fast_grads.conv_for("quick")


@pytest.mark.parametrize("kernel, stride, dilation", [(3, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2)])
def test_depthwise_taps_equal_lax_with_gradients(kernel, stride, dilation):
    """Depthwise convolutions on the CPU run as kernel taps: values and both gradients as lax's."""
    rng = np.random.default_rng(kernel + stride)
    x = jnp.asarray(rng.normal(size=(2, 11, 11, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)
    pad = dilation * (kernel - 1) // 2
    options = dict(window_strides=(stride, stride), padding=((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
                   dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, w.shape, fast_grads.NHWC),
                   feature_group_count=6)

    def loss(conv_fn, x, w):
        return jnp.sum(jnp.sin(conv_fn(x, w, **options)))

    ours = jax.value_and_grad(functools.partial(loss, fast_grads.depthwise_as_taps), argnums=(0, 1))(x, w)
    theirs = jax.value_and_grad(functools.partial(loss, jax.lax.conv_general_dilated), argnums=(0, 1))(x, w)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_depthwise_taps_in_bfloat16_round_once_like_a_convolution():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 12, 12, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(5, 5, 1, 8)), jnp.bfloat16)
    options = dict(window_strides=(2, 2), padding=((2, 2), (2, 2)),
                   dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, w.shape, fast_grads.NHWC),
                   feature_group_count=8)
    exact = jax.lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), **options)
    taps = fast_grads.depthwise_as_taps(x, w, **options)
    assert taps.dtype == jnp.bfloat16
    # One rounding of the float32 sum: within half a bfloat16 step (2^-8 relative) of the exact value.
    np.testing.assert_allclose(np.asarray(taps, np.float32), np.asarray(exact), rtol=2.0**-8, atol=1e-6)
