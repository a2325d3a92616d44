"""Matching default boxes to padded ground truth, against the numpy reference and by hand."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

import ssd_jax
from ssd_jax import configs, matching

match_jit = jax.jit(matching.match, static_argnames=("iou_threshold",))


def corner_priors(corners):
    """Centre-form priors from corner boxes written by hand (exact dyadic numbers)."""
    return np.stack([ref.corner_to_center(c) for c in corners]).astype(np.float32)


def random_gt(rng, num_gt, num_valid, num_classes=5, min_size=0.05, max_size=0.6):
    centers = rng.uniform(0.05, 0.95, size=(num_gt, 2))
    sizes = rng.uniform(min_size, max_size, size=(num_gt, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)
    labels = rng.integers(1, num_classes, size=num_gt).astype(np.int32)
    mask = np.zeros(num_gt, bool)
    mask[rng.permutation(num_gt)[:num_valid]] = True
    return boxes, labels, mask


def assert_well_conditioned(priors, gt_boxes, gt_mask, threshold, margin=1e-5):
    """The random data must not sit on a float32 knife edge (threshold or a near tie)."""
    prior_corners = np.stack([ref.center_to_corner(p) for p in priors])
    iou = ref.pairwise_iou(gt_boxes[gt_mask], prior_corners)  # [G', P]
    assert np.all(np.abs(iou - threshold) > margin), "test data too close to the threshold"
    top2 = np.sort(iou, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > margin), "near tie for a gt's best prior"
    if iou.shape[0] > 1:
        best2 = np.sort(iou, axis=0)[-2:]
        over = best2[1] >= threshold
        assert np.all(best2[1][over] - best2[0][over] > margin), "near tie for a prior's best gt"


def assert_matches_reference(priors, gt_boxes, gt_labels, gt_mask, threshold=0.5):
    got = match_jit(priors, gt_boxes, gt_labels, gt_mask, iou_threshold=threshold)
    locations, labels, positive = ref.match(priors, gt_boxes, gt_labels, gt_mask, threshold)
    assert got.locations.shape == (len(priors), 4) and got.locations.dtype == jnp.float32
    assert got.labels.dtype == jnp.int32 and got.positive.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(got.positive), positive)
    np.testing.assert_array_equal(np.asarray(got.labels), labels)
    np.testing.assert_allclose(np.asarray(got.locations), locations, rtol=1e-4, atol=1e-4)
    return got, positive


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("threshold", [0.5, 0.35])
def test_random_small_prior_set_matches_reference(seed, threshold):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.0, 1.0, size=(48, 2))
    sizes = rng.uniform(0.1, 0.5, size=(48, 2))
    priors = np.concatenate([centers, sizes], axis=1).astype(np.float32)
    gt_boxes, gt_labels, gt_mask = random_gt(rng, num_gt=6, num_valid=4)
    # A padding row that would match a prior perfectly if it were not masked.
    gt_boxes[~gt_mask] = ref.center_to_corner(priors[0]).astype(np.float32)
    assert_well_conditioned(priors, gt_boxes, gt_mask, threshold)
    got, positive = assert_matches_reference(priors, gt_boxes, gt_labels, gt_mask, threshold)
    assert positive.any()
    # Padding never matches: prior 0 equals the padding box, so only a valid gt can claim it.
    if positive[0]:
        assert int(got.labels[0]) in set(gt_labels[gt_mask])


# Seeds whose random boxes keep clear of float32 near ties (checked by assert_well_conditioned): a
# small box inside two default boxes of equal area ties in exact arithmetic, and float32 rounding
# then decides.
@pytest.mark.parametrize("seed", [11, 12, 14])
def test_random_gt_on_ssd_tiny_priors_matches_reference(seed):
    priors = ssd_jax.priors(configs.ssd_tiny())
    rng = np.random.default_rng(seed)
    gt_boxes, gt_labels, gt_mask = random_gt(rng, num_gt=6, num_valid=3 + seed % 3, min_size=0.03)
    assert_well_conditioned(priors, gt_boxes, gt_mask, 0.5)
    got, positive = assert_matches_reference(priors, gt_boxes, gt_labels, gt_mask, 0.5)
    assert positive.sum() > gt_mask.sum()  # threshold matches on top of the forced ones
    # Labels of positives come from valid gt only.
    assert set(np.asarray(got.labels)[positive]) <= set(gt_labels[gt_mask])


# Hand-made priors (corners in comments), all numbers exact in float32.
P_LEFT = (0.0, 0.0, 0.5, 0.5)
P_RIGHT = (0.5, 0.0, 1.0, 0.5)
P_BOTTOM = (0.0, 0.5, 0.5, 1.0)
P_SHIFTED = (0.125, 0.0, 0.625, 0.5)  # IoU with P_LEFT: 0.1875 / 0.3125 = 0.6


def test_duplicate_gt_boxes():
    priors = corner_priors([P_LEFT, P_RIGHT, P_BOTTOM, P_SHIFTED])
    gt_boxes = np.array([P_LEFT, P_LEFT, P_RIGHT], np.float32)
    gt_labels = np.array([3, 7, 9], np.int32)
    gt_mask = np.array([True, True, False])
    got, _ = assert_matches_reference(priors, gt_boxes, gt_labels, gt_mask)
    # Prior 0 is the best prior of both copies: the later copy (label 7) wins the forced match.
    # Prior 3 (IoU 0.6 with both) goes to the first copy (label 3). Padding (label 9) is ignored.
    np.testing.assert_array_equal(got.positive, [True, False, False, True])
    np.testing.assert_array_equal(got.labels, [7, 0, 0, 3])
    np.testing.assert_allclose(got.locations[0], np.zeros(4), atol=1e-6)
    np.testing.assert_allclose(
        got.locations[3], ref.encode(P_LEFT, ref.corner_to_center(P_SHIFTED)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(got.locations[1:3], np.zeros((2, 4)))


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_gt_equidistant_between_priors_takes_lowest_index(order):
    pair = [P_LEFT, P_RIGHT]
    priors = corner_priors([P_BOTTOM] + [pair[i] for i in order])
    gt = np.array([[0.25, 0.0, 0.75, 0.5]], np.float32)  # IoU exactly 1/3 with both
    labels = np.array([2], np.int32)
    got, _ = assert_matches_reference(priors, gt, labels, np.array([True]))
    # The forced prior is the first of the two tied ones (index 1); 1/3 < 0.5 leaves the other.
    np.testing.assert_array_equal(got.positive, [False, True, False])
    np.testing.assert_array_equal(got.labels, [0, 2, 0])
    # With a lower threshold the other one joins through step 2.
    low = match_jit(priors, gt, labels, np.array([True]), iou_threshold=0.3)
    np.testing.assert_array_equal(low.positive, [False, True, True])


def test_prior_equidistant_between_gt_takes_lowest_gt():
    priors = corner_priors([(0.25, 0.0, 0.75, 0.5), P_LEFT, P_RIGHT])
    gt = np.array([P_LEFT, P_RIGHT], np.float32)  # each is 1/3 of prior 0
    labels = np.array([4, 5], np.int32)
    got = match_jit(priors, gt, labels, np.array([True, True]), iou_threshold=0.3)
    np.testing.assert_array_equal(got.positive, [True, True, True])
    np.testing.assert_array_equal(got.labels, [4, 4, 5])
    _, ref_labels, _ = ref.match(priors, gt, labels, [True, True], 0.3)
    np.testing.assert_array_equal(ref_labels, [4, 4, 5])


def test_forced_match_overrides_a_better_threshold_match():
    priors = corner_priors([P_LEFT, P_SHIFTED])
    # gt 0 is tiny inside P_LEFT (best prior 0, IoU 1/16); gt 1 equals P_SHIFTED and has IoU 0.6
    # with P_LEFT, but P_LEFT is forced to gt 0.
    gt = np.array([(0.0, 0.0, 0.125, 0.125), P_SHIFTED], np.float32)
    labels = np.array([1, 2], np.int32)
    got, _ = assert_matches_reference(priors, gt, labels, np.array([True, True]))
    np.testing.assert_array_equal(got.positive, [True, True])
    np.testing.assert_array_equal(got.labels, [1, 2])


def test_zero_valid_gt_is_all_background():
    priors = ssd_jax.priors(configs.ssd_tiny())
    rng = np.random.default_rng(5)
    gt_boxes, gt_labels, _ = random_gt(rng, num_gt=6, num_valid=0)
    got = match_jit(priors, gt_boxes, gt_labels, np.zeros(6, bool), iou_threshold=0.5)
    assert not np.asarray(got.positive).any()
    assert not np.asarray(got.labels).any()
    np.testing.assert_array_equal(got.locations, np.zeros((len(priors), 4), np.float32))
    # Padding rows of zeros (as a data loader writes them) must not produce NaN either.
    zeros = match_jit(priors, np.zeros((6, 4), np.float32), np.zeros(6, np.int32), np.zeros(6, bool))
    assert not np.asarray(zeros.positive).any()
    assert np.all(np.isfinite(np.asarray(zeros.locations)))


def test_small_gt_gets_exactly_its_forced_prior():
    priors = ssd_jax.priors(configs.ssd_tiny())
    gt = np.array(
        [[0.137, 0.212, 0.331, 0.243], [0.0, 0.0, 0.0, 0.0], [0.613, 0.05, 0.98, 0.097]], np.float32
    )
    mask = np.array([True, False, True])
    labels = np.array([6, 1, 8], np.int32)
    prior_corners = np.stack([ref.center_to_corner(p) for p in priors])
    ious = ref.pairwise_iou(gt[mask], prior_corners)
    assert ious.max() < 0.5  # no prior reaches the threshold
    assert_well_conditioned(priors, gt, mask, 0.5)
    got, positive = assert_matches_reference(priors, gt, labels, mask)
    assert positive.sum() == 2
    best = np.argmax(ious, axis=1)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(got.positive)), np.sort(best))
    np.testing.assert_array_equal(np.asarray(got.labels)[best], [6, 8])
    np.testing.assert_allclose(
        got.locations[best[0]], ref.encode(gt[0], priors[best[0]]), rtol=1e-4, atol=1e-5
    )
    assert np.all(np.isfinite(np.asarray(got.locations)))


def test_gt_overlapping_no_prior_forces_nothing():
    priors = corner_priors([P_LEFT, P_BOTTOM])
    gt = np.array([(0.75, 0.0, 1.0, 0.25)], np.float32)  # IoU 0 with every prior
    got, positive = assert_matches_reference(priors, gt, np.array([1], np.int32), np.array([True]))
    assert not positive.any()
    assert not np.asarray(got.positive).any()


def test_match_batch_under_jit_and_vmap():
    priors = ssd_jax.priors(configs.ssd_tiny())
    rng = np.random.default_rng(21)  # clear of near ties on these priors
    images = [random_gt(rng, num_gt=5, num_valid=v) for v in (3, 0, 5)]
    boxes, labels, masks = (np.stack(x) for x in zip(*images))
    for b in range(3):
        assert_well_conditioned(priors, boxes[b], masks[b], 0.5)
    batch_fn = jax.jit(functools.partial(matching.match_batch, iou_threshold=0.5))
    got = batch_fn(priors, boxes, labels, masks)
    assert got.locations.shape == (3, len(priors), 4)
    assert got.labels.shape == got.positive.shape == (3, len(priors))
    vmapped = jax.jit(jax.vmap(matching.match, in_axes=(None, 0, 0, 0)))(priors, boxes, labels, masks)
    for b in range(3):
        locations, ref_labels, positive = ref.match(priors, boxes[b], labels[b], masks[b])
        for result in (got, vmapped):
            np.testing.assert_array_equal(result.positive[b], positive)
            np.testing.assert_array_equal(result.labels[b], ref_labels)
            np.testing.assert_allclose(result.locations[b], locations, rtol=1e-4, atol=1e-4)
    assert not np.asarray(got.positive[1]).any()
    # The threshold is passed through.
    strict = jax.jit(functools.partial(matching.match_batch, iou_threshold=0.9))(
        priors, boxes, labels, masks
    )
    assert np.asarray(strict.positive).sum() < np.asarray(got.positive).sum()


def test_match_batch_does_not_retrace():
    chex.clear_trace_counter()
    priors = jnp.asarray(ssd_jax.priors(configs.ssd_tiny()))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def targets(boxes, labels, masks):
        return matching.match_batch(priors, boxes, labels, masks, iou_threshold=0.5)

    rng = np.random.default_rng(8)
    results = []
    for num_valid in (2, 4):
        boxes, labels, masks = (np.stack(x) for x in zip(*[random_gt(rng, 4, num_valid) for _ in range(2)]))
        results.append(targets(boxes, labels, masks))
    assert np.asarray(results[0].positive).sum() != np.asarray(results[1].positive).sum()
    with pytest.raises(AssertionError):  # a new shape would trace again, and chex says so
        targets(*(np.stack(x) for x in zip(*[random_gt(rng, 5, 2) for _ in range(2)])))


def test_iou_exactly_at_threshold_is_positive():
    # Prior 1 covers half of the gt box: IoU exactly 0.5, which is >= 0.5.
    priors = corner_priors([(0.0, 0.0, 0.5, 0.5), (0.0, 0.0, 0.25, 0.5), (0.0, 0.0, 0.5, 0.25)])
    gt = np.array([(0.0, 0.0, 0.5, 0.5)], np.float32)
    got, _ = assert_matches_reference(priors, gt, np.array([3], np.int32), np.array([True]))
    np.testing.assert_array_equal(got.positive, [True, True, True])
    np.testing.assert_array_equal(got.labels, [3, 3, 3])
    above = match_jit(priors, gt, np.array([3], np.int32), np.array([True]), iou_threshold=0.51)
    np.testing.assert_array_equal(above.positive, [True, False, False])
