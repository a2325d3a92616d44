"""Box formats, IoU and the SSD box coding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_jax import boxes as box_lib

_iou = jax.jit(box_lib.pairwise_iou)


def random_corner_boxes(rng, n, lo=0.0, hi=1.0, min_size=0.01, max_size=0.6):
    centers = rng.uniform(lo, hi, size=(n, 2))
    sizes = rng.uniform(min_size, max_size, size=(n, 2))
    return np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)


def test_corners_centers_hand_values():
    corners = np.array([[0.1, 0.2, 0.5, 0.8]], np.float32)
    centers = np.asarray(box_lib.corners_to_centers(corners))
    np.testing.assert_allclose(centers, [[0.3, 0.5, 0.4, 0.6]], rtol=1e-6, atol=1e-7)
    back = np.asarray(box_lib.centers_to_corners(jnp.asarray([[0.3, 0.5, 0.4, 0.6]])))
    np.testing.assert_allclose(back, corners, rtol=1e-6, atol=1e-7)


def test_corners_centers_round_trip_with_batch_dims():
    rng = np.random.default_rng(0)
    corners = random_corner_boxes(rng, 24).reshape(2, 3, 4, 4)
    centers = box_lib.corners_to_centers(corners)
    assert centers.shape == corners.shape
    for b in range(2):
        for i in range(3):
            for k in range(4):
                np.testing.assert_allclose(
                    centers[b, i, k], ref.corner_to_center(corners[b, i, k]), rtol=1e-5, atol=1e-6
                )
    np.testing.assert_allclose(box_lib.centers_to_corners(centers), corners, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_iou_matches_reference(seed):
    rng = np.random.default_rng(seed)
    a = random_corner_boxes(rng, 7)
    b = random_corner_boxes(rng, 9)
    b[0] = a[0]  # an identical pair
    b[1] = a[1] + np.float32(2.0)  # a far-away (disjoint) box
    got = np.asarray(_iou(a, b))
    expected = ref.pairwise_iou(a, b)
    assert got.shape == (7, 9)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got[0, 0] == pytest.approx(1.0, rel=1e-6)
    assert got[1, 1] == 0.0
    assert 0.0 < got.max() and np.all((got >= 0.0) & (got <= 1.0 + 1e-6))


def test_pairwise_iou_broadcasts_over_batch():
    rng = np.random.default_rng(3)
    a = random_corner_boxes(rng, 10).reshape(2, 5, 4)
    b = random_corner_boxes(rng, 6).reshape(2, 3, 4)
    got = np.asarray(_iou(a, b))
    assert got.shape == (2, 5, 3)
    for i in range(2):
        np.testing.assert_allclose(got[i], ref.pairwise_iou(a[i], b[i]), rtol=1e-5, atol=1e-6)


def test_pairwise_iou_special_cases():
    a = jnp.asarray(
        [
            [0.0, 0.0, 0.5, 0.5],
            [0.0, 0.0, 0.5, 0.5],
            [0.2, 0.2, 0.2, 0.2],  # a point
            [0.3, 0.3, 0.3, 0.7],  # zero width
            [0.0, 0.0, 0.5, 0.5],
        ]
    )
    b = jnp.asarray(
        [
            [0.0, 0.0, 0.5, 0.5],  # identical to a[0]
            [0.5, 0.0, 1.0, 0.5],  # touches a[1] along an edge
            [0.2, 0.2, 0.2, 0.2],  # the same point
            [0.3, 0.3, 0.3, 0.7],  # the same zero-width box
            [0.25, 0.0, 0.75, 0.5],  # half overlap: IoU 1/3
        ]
    )
    got = np.asarray(_iou(a, b))
    assert np.all(np.isfinite(got))
    diagonal = np.diag(got)
    np.testing.assert_allclose(diagonal, [1.0, 0.0, 0.0, 0.0, 1 / 3], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, ref.pairwise_iou(a, b), rtol=1e-5, atol=1e-6)


def test_pairwise_iou_degenerate_gradient_is_finite():
    a = jnp.asarray([[0.2, 0.2, 0.2, 0.2]])
    grad = jax.jit(jax.grad(lambda x: box_lib.pairwise_iou(x, x).sum()))(a)
    assert np.all(np.isfinite(grad))


def test_encode_hand_values():
    gt = jnp.asarray([0.2, 0.3, 0.6, 0.5])  # centre (0.4, 0.4), size (0.4, 0.2)
    prior = jnp.asarray([0.5, 0.5, 0.2, 0.4])
    expected = [
        (0.4 - 0.5) / (0.1 * 0.2),  # -5
        (0.4 - 0.5) / (0.1 * 0.4),  # -2.5
        math.log(0.4 / 0.2) / 0.2,
        math.log(0.2 / 0.4) / 0.2,
    ]
    np.testing.assert_allclose(box_lib.encode(gt, prior), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected, ref.encode([0.2, 0.3, 0.6, 0.5], [0.5, 0.5, 0.2, 0.4]), rtol=1e-12)
    # Other variances.
    custom = box_lib.encode(gt, prior, variances=(0.5, 0.25))
    np.testing.assert_allclose(
        custom,
        [(0.4 - 0.5) / (0.5 * 0.2), (0.4 - 0.5) / (0.5 * 0.4), math.log(2) / 0.25, -math.log(2) / 0.25],
        rtol=1e-5,
        atol=1e-6,
    )
    # A box equal to its prior encodes to zero.
    np.testing.assert_allclose(
        box_lib.encode(jnp.asarray([0.4, 0.3, 0.6, 0.7]), prior), [0.0] * 4, atol=1e-6
    )


def test_encode_decode_match_reference_on_random_boxes():
    rng = np.random.default_rng(4)
    gt = random_corner_boxes(rng, 20, min_size=0.02)
    prior_centers = np.concatenate(
        [rng.uniform(0, 1, (20, 2)), rng.uniform(0.05, 0.9, (20, 2))], axis=1
    ).astype(np.float32)
    offsets = np.asarray(box_lib.encode(gt, prior_centers))
    expected = np.stack([ref.encode(g, p) for g, p in zip(gt, prior_centers)])
    np.testing.assert_allclose(offsets, expected, rtol=1e-4, atol=1e-4)
    decoded = np.asarray(box_lib.decode(offsets, prior_centers))
    expected_decoded = np.stack([ref.decode(o, p) for o, p in zip(offsets, prior_centers)])
    np.testing.assert_allclose(decoded, expected_decoded, rtol=1e-5, atol=1e-6)


def test_decode_hand_values():
    prior = jnp.asarray([0.5, 0.5, 0.2, 0.4])
    np.testing.assert_allclose(box_lib.decode(jnp.zeros(4), prior), [0.4, 0.3, 0.6, 0.7], rtol=1e-6)
    # tx = 1 moves the centre by 0.1 * w; tw = 5 scales the width by e.
    got = box_lib.decode(jnp.asarray([1.0, -1.0, 5.0, 0.0]), prior)
    cx, cy, w, h = 0.5 + 0.1 * 0.2, 0.5 - 0.1 * 0.4, 0.2 * math.e, 0.4
    np.testing.assert_allclose(got, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-5)


def test_decode_max_log_scale_clamps_before_exp():
    prior = jnp.asarray([0.5, 0.5, 0.2, 0.4])
    clamp = math.log(1000.0 / 16)
    offsets = jnp.asarray([0.0, 0.0, 1000.0, -5.0])  # log scales 200 (clamped) and -1 (kept)
    got = np.asarray(box_lib.decode(offsets, prior, max_log_scale=clamp))
    w, h = 0.2 * 1000.0 / 16, 0.4 * math.exp(-1.0)
    np.testing.assert_allclose(got, [0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2], rtol=1e-5)
    np.testing.assert_allclose(got, ref.decode(offsets, prior, max_log_scale=clamp), rtol=1e-5)
    # Without the clamp the same offsets overflow float32.
    unclamped = np.asarray(box_lib.decode(offsets, prior))
    assert not np.all(np.isfinite(unclamped))
    # Below the clamp it changes nothing.
    small = jnp.asarray([0.3, -0.2, 1.0, -1.0])
    np.testing.assert_array_equal(
        box_lib.decode(small, prior, max_log_scale=clamp), box_lib.decode(small, prior)
    )


@jax.jit
def _round_trip(box, prior):
    return box_lib.decode(box_lib.encode(box, prior), prior)


unit = st.floats(0.0, 1.0, width=32)
size = st.floats(0.0099999997764825820, 1.0, width=32)  # 0.01 rounded to float32


@settings(max_examples=50, deadline=None)
@given(
    gt_center=st.tuples(st.floats(-0.5, 1.5, width=32), st.floats(-0.5, 1.5, width=32)),
    gt_size=st.tuples(size, size),
    prior=st.tuples(unit, unit, size, size),
)
def test_decode_inverts_encode(gt_center, gt_size, prior):
    (cx, cy), (w, h) = gt_center, gt_size
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)
    prior = np.asarray(prior, np.float32)
    got = np.asarray(_round_trip(box[None], prior[None]))[0]
    np.testing.assert_allclose(got, box, rtol=1e-5, atol=2e-6)
