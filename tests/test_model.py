"""The Flax SSD model: shapes, parameter layout, initialisation, output order, bfloat16."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssd_jax
from ssd_jax import configs
from ssd_jax.models import SSD, L2Norm, param_shapes
from ssd_jax.models.ssd import flatten_head


def count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def output_shapes(config, batch=2):
    images = jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), jnp.uint8)
    params = param_shapes(config)
    return jax.eval_shape(lambda p, x: SSD(config).apply({"params": p}, x), params, images)


@pytest.mark.parametrize(
    "config, priors",
    [(configs.ssd300(), 8732), (configs.ssd300_coco(), 8732), (configs.ssd512(), 24564),
     (configs.ssd_tiny(), configs.ssd_tiny().num_priors)],
    ids=lambda c: getattr(c, "name", None),
)
def test_output_shapes_match_priors(config, priors):
    loc, logits = output_shapes(config)
    assert loc.shape == (2, priors, 4) and logits.shape == (2, priors, config.num_classes)
    assert loc.dtype == jnp.float32 and logits.dtype == jnp.float32
    assert ssd_jax.priors(config).shape[0] == priors


def test_torchvision_layout_has_torchvisions_parameter_count():
    # torchvision's ssd300_vgg16(num_classes=91) has 35,641,826 parameters.
    assert count(param_shapes(configs.ssd300_torchvision())) == 35_641_826


def test_parameter_names_and_shapes_follow_vgg16():
    shapes = param_shapes(configs.ssd300())
    backbone = shapes["backbone"]
    assert backbone["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
    assert backbone["conv4_3"]["kernel"].shape == (3, 3, 512, 512)
    assert backbone["conv4_3_norm"]["scale"].shape == (512,)
    assert backbone["fc6"]["kernel"].shape == (3, 3, 512, 1024)
    assert backbone["fc7"]["kernel"].shape == (1, 1, 1024, 1024)
    assert shapes["extra1_2"]["kernel"].shape == (3, 3, 256, 512)
    assert shapes["loc_0"]["kernel"].shape == (3, 3, 512, 4 * 4)
    assert shapes["conf_1"]["kernel"].shape == (3, 3, 1024, 6 * 21)
    assert shapes["conf_5"]["kernel"].shape == (3, 3, 256, 4 * 21)


def test_init_is_xavier_uniform_with_zero_bias_and_scale_20():
    config = dataclasses.replace(configs.ssd_tiny(), backbone=dataclasses.replace(configs.ssd_tiny().backbone,
                                                                                  l2norm_scale=20.0))
    params = ssd_jax.init(jax.random.key(0), config)
    kernel = np.asarray(params["backbone"]["conv3_1"]["kernel"])  # [3, 3, 16, 32]
    limit = np.sqrt(6.0 / (9 * 16 + 9 * 32))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.9 * limit  # uniform over the whole range, not a narrower init
    assert np.all(np.asarray(params["backbone"]["conv3_1"]["bias"]) == 0)
    np.testing.assert_array_equal(params["backbone"]["conv4_3_norm"]["scale"], np.full(64, 20.0))
    again = ssd_jax.init(jax.random.key(0), config)
    assert jax.tree.all(jax.tree.map(np.array_equal, params, again))
    other = ssd_jax.init(jax.random.key(1), config)
    assert not np.array_equal(other["loc_0"]["kernel"], params["loc_0"]["kernel"])


def test_l2norm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 8)).astype(np.float32)
    y = L2Norm(scale_init=20.0).apply({"params": {"scale": np.arange(8, dtype=np.float32)}}, x)
    expected = x / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True) * np.arange(8)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_flatten_head_orders_row_column_box():
    height, width, boxes, k = 2, 3, 4, 5
    # value encodes (row, column, box, k) so the flattened position can be read back
    h, w, a, j = np.meshgrid(np.arange(height), np.arange(width), np.arange(boxes), np.arange(k), indexing="ij")
    code = (h * 1000 + w * 100 + a * 10 + j).astype(np.float32)  # [H, W, A, K]
    flat = np.asarray(flatten_head(jnp.asarray(code.reshape(1, height, width, boxes * k)), k))[0]
    for row in range(height):
        for column in range(width):
            for box in range(boxes):
                index = (row * width + column) * boxes + box
                np.testing.assert_array_equal(flat[index], row * 1000 + column * 100 + box * 10 + np.arange(k))


def test_head_bias_reaches_the_matching_prior_slot():
    """A bias on one anchor channel of source 1 appears at exactly that source's box slot."""
    config = configs.ssd_tiny(num_classes=3)
    params = jax.tree.map(np.zeros_like, ssd_jax.init(jax.random.key(0), config))
    params["conf_1"]["bias"] = np.zeros_like(params["conf_1"]["bias"])
    box, cls = 2, 1
    params["conf_1"]["bias"][box * config.num_classes + cls] = 7.0
    size = config.image_size
    _, logits = SSD(config).apply({"params": params}, np.zeros((1, size, size, 3), np.float32))
    logits = np.asarray(logits)[0]
    start = config.feature_map_sizes[0] ** 2 * config.boxes_per_location[0]
    cells, per_cell = config.feature_map_sizes[1] ** 2, config.boxes_per_location[1]
    hot = np.zeros((cells, per_cell, config.num_classes))
    hot[:, box, cls] = 7.0
    expected = np.zeros_like(logits)
    expected[start:start + cells * per_cell] = hot.reshape(-1, config.num_classes)
    np.testing.assert_array_equal(logits, expected)


def test_wrong_image_shape_is_rejected():
    config = configs.ssd_tiny()
    params = ssd_jax.init(jax.random.key(0), config)
    with pytest.raises(ValueError, match="expects images"):
        SSD(config).apply({"params": params}, np.zeros((1, 100, config.image_size, 3), np.float32))


def test_bfloat16_compute_is_close_to_float32():
    config = configs.ssd_tiny()
    params = ssd_jax.init(jax.random.key(0), config)
    size = config.image_size
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    loc32, logit32 = jax.jit(SSD(config).apply)({"params": params}, images)
    loc16, logit16 = jax.jit(SSD(config, dtype=jnp.bfloat16).apply)({"params": params}, images)
    assert loc16.dtype == jnp.float32  # outputs are float32 whatever the compute dtype
    for ours, reference in ((loc16, loc32), (logit16, logit32)):
        error = np.abs(np.asarray(ours) - np.asarray(reference)).max() / np.abs(np.asarray(reference)).max()
        assert 0 < error < 0.05  # bfloat16 has 8 bits of mantissa; 0 would mean it never ran in bf16
