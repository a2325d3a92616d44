"""Training with BatchNorm: identity initial BatchNorms, and the fold into the plain model."""

import jax
import jax.numpy as jnp
import numpy as np

import ssd_jax
from ssd_jax import configs
from ssd_jax.models import SSD, fold_batch_norm, init_batch_norm

CONFIG = configs.ssd_tiny(num_classes=6)


def random_variables(seed=0):
    """BatchNorm variables far from their initial values: folding must get every term right."""
    params, stats = init_batch_norm(ssd_jax.init(jax.random.key(seed), CONFIG), CONFIG)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: a + 0.3 * rng.normal(size=a.shape).astype(np.float32), params)
    stats = jax.tree.map(lambda a: np.abs(a + rng.normal(size=a.shape)).astype(np.float32), stats)
    return params, stats


def test_every_convolution_of_base_and_extras_gets_an_identity_batch_norm():
    plain = ssd_jax.init(jax.random.key(0), CONFIG)
    params, stats = init_batch_norm(plain, CONFIG)
    backbone = params["backbone"]
    assert sorted(k for k in backbone if k.endswith("_bn")) == sorted(
        f"{k}_bn" for k in plain["backbone"] if k != "conv4_3_norm")
    assert all(f"extra{i}_{j}_bn" in params for i in (1, 2, 3) for j in (1, 2))
    assert not any(k.startswith(("loc_", "conf_")) and k.endswith("_bn") for k in params)  # heads: none
    np.testing.assert_array_equal(backbone["conv1_1"]["kernel"], plain["backbone"]["conv1_1"]["kernel"])
    norm, running = backbone["conv2_1_bn"], stats["backbone"]["conv2_1_bn"]
    assert np.all(norm["scale"] == 1) and np.all(norm["bias"] == 0)
    assert np.all(running["mean"] == 0) and np.all(running["var"] == 1)


def test_folded_plain_model_computes_the_batch_norm_model_in_evaluation_mode():
    params, stats = random_variables()
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 128, 128, 3)), jnp.float32)
    expected = jax.jit(SSD(CONFIG, batch_norm=True).apply)({"params": params, "batch_stats": stats}, images)
    folded = fold_batch_norm(params, stats)
    assert jax.tree.structure(folded) == jax.tree.structure(ssd_jax.init(jax.random.key(0), CONFIG))
    got = jax.jit(SSD(CONFIG).apply)({"params": folded}, images)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
    # And the detections: detect takes the folded parameters like any others.
    detections = ssd_jax.detect(folded, images.astype(jnp.uint8), config=CONFIG)
    assert detections.boxes.shape == (2, 200, 4)


def test_training_mode_normalises_with_the_batch_and_updates_the_running_statistics():
    params, stats = init_batch_norm(ssd_jax.init(jax.random.key(0), CONFIG), CONFIG)
    images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (4, 128, 128, 3)), jnp.float32)
    apply = jax.jit(SSD(CONFIG, batch_norm=True).apply, static_argnames=("train", "mutable"))
    _, updated = apply({"params": params, "batch_stats": stats}, images, train=True, mutable=("batch_stats",))
    new = updated["batch_stats"]["backbone"]["conv1_1_bn"]
    # momentum 0.9: running mean = 0.1 * the batch mean of conv1_1's output (pixels minus the mean)
    conv1 = jax.lax.conv_general_dilated(images - jnp.asarray(CONFIG.mean_rgb), params["backbone"]["conv1_1"]["kernel"],
                                         (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(new["mean"], 0.1 * conv1.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)
