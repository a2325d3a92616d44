"""ssd_jax.detect: the inference program, its input checks and its compilation cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_models import spread_params

import ssd_jax
from ssd_jax import configs
from ssd_jax.detect import _detect, cast_params, compile_detect, postprocess, resize_images
from ssd_jax.models import SSD

CONFIG = configs.ssd_tiny(num_classes=4)


@pytest.fixture(scope="module")
def params():
    return spread_params(CONFIG)


def images(batch=2, height=120, width=200, dtype=np.uint8, seed=0):
    pixels = np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3))
    return pixels.astype(dtype)


def test_detections_are_well_formed(params):
    dets = ssd_jax.detect(params, images(), config=CONFIG, max_detections=50)
    assert dets.boxes.shape == (2, 50, 4) and dets.scores.shape == (2, 50)
    assert dets.classes.dtype == jnp.int32 and dets.num_detections.shape == (2,)
    for b in range(2):
        n = int(dets.num_detections[b])
        assert 0 < n <= 50
        boxes, scores, classes = (np.asarray(x[b]) for x in (dets.boxes, dets.scores, dets.classes))
        assert np.all((boxes[:n] >= 0) & (boxes[:n] <= 1))  # clipped to the image
        assert np.all(boxes[:n, 2:] >= boxes[:n, :2])
        assert np.all(np.diff(scores[:n]) <= 0) and np.all(scores[:n] > 0.01)
        assert np.all((classes[:n] >= 1) & (classes[:n] < CONFIG.num_classes))
        assert np.all(scores[n:] == 0) and np.all(classes[n:] == 0) and np.all(boxes[n:] == 0)


def test_detect_equals_model_plus_postprocess(params):
    pixels = images(height=CONFIG.image_size, width=CONFIG.image_size, dtype=np.float32)
    dets = ssd_jax.detect(params, pixels, config=CONFIG)
    loc, logits = jax.jit(SSD(CONFIG).apply)({"params": params}, pixels)
    expected = postprocess(loc, logits, CONFIG, score_threshold=0.01, iou_threshold=0.45,
                                  pre_nms_top_k=400, max_detections=200)
    for ours, theirs in zip(dets, expected):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-6)


def test_uint8_and_float_inputs_agree(params):
    pixels = images()
    as_uint8 = ssd_jax.detect(params, pixels, config=CONFIG)
    as_float = ssd_jax.detect(params, pixels.astype(np.float32), config=CONFIG)
    np.testing.assert_allclose(as_uint8.scores, as_float.scores, rtol=1e-6)


def bilinear_reference(image, size):
    """Half-pixel-centre bilinear resize (torch align_corners=False), float64, edge-clamped."""
    height, width, _ = image.shape

    def axis(out, n):
        src = np.maximum((np.arange(out) + 0.5) * n / out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, src - lo

    y0, y1, fy = axis(size, height)
    x0, x1, fx = axis(size, width)
    top = image[y0][:, x0] * (1 - fx)[None, :, None] + image[y0][:, x1] * fx[None, :, None]
    bottom = image[y1][:, x0] * (1 - fx)[None, :, None] + image[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


@pytest.mark.parametrize("height, width", [(80, 120), (320, 240), (161, 77)])
def test_resize_is_plain_bilinear(height, width):
    image = images(1, height, width, np.float32)[0]
    ours = np.asarray(resize_images(image[None], 160))[0]
    # float32 arithmetic on a 0..255 scale: 1e-2 is a relative error of 4e-5
    np.testing.assert_allclose(ours, bilinear_reference(image.astype(np.float64), 160), atol=1e-2)


def test_no_recompilation_for_repeated_shapes(params):
    before = _detect._cache_size()  # shapes no other test uses, so the first call compiles
    for seed in range(3):
        jax.block_until_ready(ssd_jax.detect(params, images(3, 97, 131, seed=seed), config=CONFIG))
    assert _detect._cache_size() == before + 1
    ssd_jax.detect(params, images(1, 97, 131), config=CONFIG)  # a new shape compiles once more
    assert _detect._cache_size() == before + 2


@pytest.mark.parametrize("bad, message", [
    (np.zeros((120, 200, 3), np.uint8), "rank 4"),
    (np.zeros((1, 120, 200, 4), np.uint8), "3 channels"),
    (np.zeros((1, 3, 120, 200), np.uint8), "3 channels"),
    (np.zeros((0, 120, 200, 3), np.uint8), "non-empty"),
    (np.zeros((1, 120, 200, 3), np.int32), "dtype int32"),
    (np.zeros((1, 120, 200, 3), bool), "dtype bool"),
])
def test_bad_images_raise_clear_errors(params, bad, message):
    with pytest.raises(ValueError, match=message):
        ssd_jax.detect(params, bad, config=CONFIG)


def test_params_of_another_config_are_rejected(params):
    with pytest.raises(ValueError, match=r"do not fit config 'ssd_tiny' \(7 classes\).*conf_0"):
        ssd_jax.detect(params, images(), config=configs.ssd_tiny(num_classes=7))
    with pytest.raises(ValueError, match="missing"):
        ssd_jax.detect({"backbone": params["backbone"]}, images(), config=CONFIG)


@pytest.mark.parametrize("option", [dict(score_threshold=1.5), dict(iou_threshold=0.0),
                                    dict(max_detections=0), dict(pre_nms_top_k=0)])
def test_bad_options_raise(params, option):
    with pytest.raises(ValueError):
        ssd_jax.detect(params, images(), config=CONFIG, **option)


def test_bfloat16_detect_runs_and_agrees_with_float32(params):
    pixels = images(height=CONFIG.image_size, width=CONFIG.image_size)
    f32 = ssd_jax.detect(params, pixels, config=CONFIG)
    bf16 = ssd_jax.detect(params, pixels, config=CONFIG, dtype=jnp.bfloat16)
    # The best detection per image is the same object, with a close score.
    np.testing.assert_array_equal(f32.classes[:, 0], bf16.classes[:, 0])
    np.testing.assert_allclose(f32.scores[:, 0], bf16.scores[:, 0], atol=0.05)
    iou = np.asarray(ssd_jax.boxes.pairwise_iou(f32.boxes[:, :1], bf16.boxes[:, :1]))
    assert np.all(iou > 0.8)


def test_params_cast_once_give_the_bfloat16_detections(params):
    # Equal to bfloat16 rounding, not bitwise: given float32 weights, XLA may skip their rounding
    # to bfloat16 (it allows excess precision), as XLA:CPU does.
    pixels = images(height=CONFIG.image_size, width=CONFIG.image_size, seed=4)  # the shape of the test above
    cast = ssd_jax.detect(cast_params(params, jnp.bfloat16), pixels, config=CONFIG, dtype=jnp.bfloat16)
    plain = ssd_jax.detect(params, pixels, config=CONFIG, dtype=jnp.bfloat16)
    np.testing.assert_array_equal(cast.classes[:, 0], plain.classes[:, 0])
    np.testing.assert_allclose(cast.scores[:, 0], plain.scores[:, 0], atol=0.02)
    assert np.all(np.asarray(ssd_jax.boxes.pairwise_iou(cast.boxes[:, :1], plain.boxes[:, :1])) > 0.9)
    # Only the convolutions' parameters change dtype: SSD300's L2Norm scale is used in float32.
    dtypes = {jax.tree_util.keystr(path): leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(
        cast_params(ssd_jax.init(jax.random.key(0), configs.ssd300()), jnp.bfloat16))}
    assert {key: dtype for key, dtype in dtypes.items() if dtype != jnp.bfloat16} == {
        "['backbone']['conv4_3_norm']['scale']": jnp.float32}
    assert sum(key.endswith("['kernel']") for key in dtypes) == 23 + 12  # VGG16 + extras, and the heads


def test_compiled_detect_equals_detect_and_takes_only_its_shape(params):
    pixels = images(height=CONFIG.image_size, width=CONFIG.image_size, seed=4)
    detect_batch = compile_detect(params, pixels, config=CONFIG, dtype=jnp.bfloat16, max_detections=50)
    expected = ssd_jax.detect(cast_params(params, jnp.bfloat16), pixels, config=CONFIG, dtype=jnp.bfloat16,
                              max_detections=50)
    np.testing.assert_equal(jax.tree.map(np.asarray, detect_batch(pixels)), jax.tree.map(np.asarray, expected))
    assert jax.tree.leaves(params)[0].dtype == jnp.float32  # the caller's parameters are left as they were
    size = CONFIG.image_size
    with pytest.raises(ValueError, match=rf"batches of shape \(2, {size}, {size}, 3\) and dtype uint8, got \(3, "):
        detect_batch(images(3, height=CONFIG.image_size, width=CONFIG.image_size))


def test_network_in_slices_gives_the_same_detections(params):
    pixels = images(batch=5)
    whole = ssd_jax.detect(params, pixels, config=CONFIG, network_batch=5)
    sliced = ssd_jax.detect(params, pixels, config=CONFIG, network_batch=2)  # slices of 2, 2 and 1 (padded)
    for a, b in zip(whole, sliced):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="network_batch"):
        ssd_jax.detect(params, pixels, config=CONFIG, network_batch=0)
    from ssd_jax.detect import default_network_batch

    assert default_network_batch(64, jnp.float32) is None  # slices only for float32 on a GPU
