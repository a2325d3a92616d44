"""The multibox loss and hard negative mining, against the numpy reference."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from ssd_jax import losses

B, P, C = 3, 20, 5


def random_inputs(rng, positives_per_image=(3, 0, 8), batch=B, num_priors=P, num_classes=C):
    """Random predictions and targets; image i gets exactly ``positives_per_image[i]`` positives."""
    positive = np.zeros((batch, num_priors), bool)
    for b, n in enumerate(positives_per_image):
        positive[b, rng.permutation(num_priors)[:n]] = True
    labels = np.where(positive, rng.integers(1, num_classes, size=(batch, num_priors)), 0).astype(np.int32)
    target_loc = np.where(positive[..., None], rng.normal(size=(batch, num_priors, 4)), 0.0)
    pred_loc = rng.normal(scale=1.5, size=(batch, num_priors, 4))  # both branches of smooth L1
    logits = rng.normal(scale=2.0, size=(batch, num_priors, num_classes))
    return (
        pred_loc.astype(np.float32),
        logits.astype(np.float32),
        target_loc.astype(np.float32),
        labels,
        positive,
    )


@functools.partial(jax.jit, static_argnames=("neg_pos_ratio", "alpha"))
def loss_fn(pred_loc, logits, target_loc, labels, positive, neg_pos_ratio=3.0, alpha=1.0):
    return losses.multibox_loss(
        pred_loc, logits, target_loc, labels, positive, neg_pos_ratio=neg_pos_ratio, alpha=alpha
    )


def assert_loss_matches(got, expected):
    for field in ("total", "localization", "confidence"):
        assert float(getattr(got, field)) == pytest.approx(expected[field], rel=1e-5, abs=1e-6), field
    assert int(got.num_positives) == expected["num_positives"]
    assert int(got.num_negatives) == expected["num_negatives"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_multibox_loss_matches_reference(seed):
    rng = np.random.default_rng(seed)
    inputs = random_inputs(rng)
    got = loss_fn(*inputs)
    expected = ref.multibox_loss(*inputs)
    assert_loss_matches(got, expected)
    # Image 0: 3 positives -> 9 negatives; image 1: none -> none; image 2: 8 positives, only 12
    # negatives left (< 24).
    assert expected["num_positives"] == 11
    assert int(got.num_negatives) == 9 + 0 + 12
    assert got.total.shape == () and got.total.dtype == jnp.float32


@pytest.mark.parametrize(
    "neg_pos_ratio, alpha, counts, num_negatives",
    [
        (1.5, 1.0, (3, 1, 2), 4 + 1 + 3),  # floor(4.5), floor(1.5), floor(3)
        (3.0, 0.5, (1, 2, 5), 3 + 6 + 15),
        (0.0, 2.0, (2, 2, 2), 0),
        (10.0, 1.0, (4, 0, 1), 16 + 0 + 10),
    ],
)
def test_multibox_loss_options(neg_pos_ratio, alpha, counts, num_negatives):
    rng = np.random.default_rng(42)
    inputs = random_inputs(rng, positives_per_image=counts)
    got = loss_fn(*inputs, neg_pos_ratio=neg_pos_ratio, alpha=alpha)
    expected = ref.multibox_loss(*inputs, neg_pos_ratio=neg_pos_ratio, alpha=alpha)
    assert_loss_matches(got, expected)
    assert int(got.num_negatives) == num_negatives
    assert float(got.total) == pytest.approx(float(got.confidence) + alpha * float(got.localization), rel=1e-6)


def test_multibox_loss_hand_example():
    # One image, two priors: prior 0 positive (class 1), prior 1 negative and mined (ratio 3).
    pred_loc = np.array([[[0.5, -2.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]], np.float32)
    target_loc = np.zeros((1, 2, 4), np.float32)
    logits = np.array([[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]], np.float32)
    labels = np.array([[1, 0]], np.int32)
    positive = np.array([[True, False]])
    got = loss_fn(pred_loc, logits, target_loc, labels, positive)
    loc = 0.5 * 0.5**2 + (2.0 - 0.5)  # smooth L1 of 0.5 and of -2; the negative's 9s do not count
    conf = -(1.0 - np.log(np.exp(1.0) + 2.0)) - (2.0 - np.log(np.exp(2.0) + 2.0))
    assert float(got.localization) == pytest.approx(loc, rel=1e-6)
    assert float(got.confidence) == pytest.approx(conf, rel=1e-6)
    assert float(got.total) == pytest.approx(conf + loc, rel=1e-6)
    assert int(got.num_positives) == 1 and int(got.num_negatives) == 1


def test_no_positives_gives_zero_loss_and_finite_gradients():
    rng = np.random.default_rng(5)
    pred_loc, logits, target_loc, labels, positive = random_inputs(rng, positives_per_image=(0, 0, 0))
    got = loss_fn(pred_loc, logits, target_loc, labels, positive)
    for field in ("total", "localization", "confidence"):
        assert float(getattr(got, field)) == 0.0
    assert int(got.num_positives) == 0 and int(got.num_negatives) == 0
    expected = ref.multibox_loss(pred_loc, logits, target_loc, labels, positive)
    assert expected["total"] == 0.0
    grads = jax.jit(jax.grad(lambda a, b: loss_fn(a, b, target_loc, labels, positive).total, argnums=(0, 1)))(
        pred_loc, logits
    )
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_gradients_are_finite_and_follow_smooth_l1():
    rng = np.random.default_rng(6)
    pred_loc, logits, target_loc, labels, positive = random_inputs(rng)
    # Extreme logits must not produce NaN gradients.
    logits[0, 0] = [80.0, -80.0, 0.0, 50.0, -50.0]

    def total(pl, lg):
        return loss_fn(pl, lg, target_loc, labels, positive).total

    g_loc, g_logits = jax.jit(jax.grad(total, argnums=(0, 1)))(pred_loc, logits)
    g_loc, g_logits = np.asarray(g_loc), np.asarray(g_logits)
    assert np.all(np.isfinite(g_loc)) and np.all(np.isfinite(g_logits))
    # d(smooth L1)/dx = clip(x, -1, 1), divided by N, on positives only.
    n = positive.sum()
    expected = np.where(positive[..., None], np.clip(pred_loc - target_loc, -1.0, 1.0) / n, 0.0)
    np.testing.assert_allclose(g_loc, expected, rtol=1e-5, atol=1e-7)
    # Logits of priors that are neither positive nor mined get no gradient.
    mined = ref.hard_negative_mask(
        [[ref.cross_entropy(logits[b, p], 0) for p in range(P)] for b in range(B)], positive
    )
    unused = ~(positive | mined)
    assert unused.any()
    np.testing.assert_array_equal(g_logits[unused], 0.0)
    assert np.abs(g_logits[positive | mined]).sum() > 0


def test_hard_negative_mask_matches_reference():
    rng = np.random.default_rng(7)
    background = rng.uniform(0, 5, size=(4, 16)).astype(np.float32)
    positive = np.zeros((4, 16), bool)
    positive[0, [1, 5]] = True  # 6 negatives kept
    positive[2, :5] = True  # 15 wanted, 11 available
    positive[3, 7] = True  # 3 kept
    background[0, 1] = 100.0  # a positive with a huge background loss is never mined
    mask = np.asarray(jax.jit(losses.hard_negative_mask)(background, positive))
    expected = ref.hard_negative_mask(background, positive)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(mask.sum(axis=1), [6, 0, 11, 3])
    assert not (mask & positive).any()
    # The mined ones are the hardest: every kept negative's loss >= every dropped negative's.
    for b in (0, 3):
        kept = background[b][mask[b]]
        dropped = background[b][~mask[b] & ~positive[b]]
        assert kept.min() >= dropped.max()


def test_hard_negative_mask_ties_go_to_lower_index():
    background = np.array([[1.0, 2.0, 2.0, 2.0, 2.0, 0.5, 2.0, 1.0]], np.float32)
    positive = np.array([[True, False, False, False, False, False, False, False]])
    mask = np.asarray(losses.hard_negative_mask(background, positive, neg_pos_ratio=2.0))
    # Two to keep among five tied at 2.0: indices 1 and 2.
    np.testing.assert_array_equal(mask, [[False, True, True, False, False, False, False, False]])
    np.testing.assert_array_equal(mask, ref.hard_negative_mask(background, positive, 2.0))
    mask3 = np.asarray(losses.hard_negative_mask(background, positive, neg_pos_ratio=5.0))
    np.testing.assert_array_equal(mask3, [[False, True, True, True, True, False, True, False]])


def test_multibox_loss_does_not_retrace():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(*inputs):
        return losses.multibox_loss(*inputs)

    rng = np.random.default_rng(9)
    first = step(*random_inputs(rng, positives_per_image=(1, 2, 3)))
    second = step(*random_inputs(rng, positives_per_image=(4, 0, 2)))
    assert int(first.num_positives) == 6 and int(second.num_positives) == 6
    assert float(first.total) != float(second.total)
    with pytest.raises(AssertionError):  # another shape traces again, which chex reports
        step(*random_inputs(rng, positives_per_image=(1, 1), batch=2))


def test_negatives_are_scored_against_background_whatever_their_label():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(1, 8, 3)).astype(np.float32)
    locations = rng.normal(size=(1, 8, 4)).astype(np.float32)
    positive = np.zeros((1, 8), bool)
    positive[0, 0] = True
    labels = np.where(positive, 1, 0).astype(np.int32)
    noisy_labels = np.where(positive, 1, 2).astype(np.int32)  # negatives carrying a stray label
    clean = losses.multibox_loss(locations, logits, locations * 0, labels, positive)
    noisy = losses.multibox_loss(locations, logits, locations * 0, noisy_labels, positive)
    np.testing.assert_allclose(noisy.total, clean.total, rtol=1e-6)
