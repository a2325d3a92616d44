"""Greedy NMS and SSD's batched post-processing, against the numpy reference."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from ssd_jax import nms

nms_mask = jax.jit(nms.greedy_nms_mask, static_argnames=("iou_threshold",))
batched_nms = jax.jit(
    nms.batched_nms,
    static_argnames=("score_threshold", "iou_threshold", "pre_nms_top_k", "max_detections"),
)


def clustered_boxes(rng, n, num_clusters=4, jitter=0.04):
    """Corner boxes around a few centres, so that many pairs overlap."""
    centers = rng.uniform(0.2, 0.8, size=(num_clusters, 2))[rng.integers(0, num_clusters, n)]
    centers = centers + rng.normal(scale=jitter, size=(n, 2))
    sizes = rng.uniform(0.1, 0.3, size=(n, 2))
    return np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)


def assert_clear_of_threshold(boxes, threshold, margin=1e-5):
    """No pair of the random boxes sits on the float32 knife edge of the IoU threshold."""
    iou = ref.pairwise_iou(boxes, boxes)
    assert np.all(np.abs(iou - threshold) > margin), "test data too close to the IoU threshold"


# ----------------------------------------------------------------------------------------------
# greedy_nms_mask


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.45, 0.7])
def test_greedy_nms_mask_matches_reference(seed, threshold):
    rng = np.random.default_rng(seed)
    boxes = clustered_boxes(rng, 2 * 3 * 12).reshape(2, 3, 12, 4)  # leading batch dims
    valid = rng.uniform(size=(2, 3, 12)) < 0.8
    keep = np.asarray(nms_mask(boxes, valid, iou_threshold=threshold))
    assert keep.shape == valid.shape and keep.dtype == np.bool_
    suppressed_any = False
    for i in range(2):
        for j in range(3):
            assert_clear_of_threshold(boxes[i, j], threshold)
            expected = ref.greedy_nms(boxes[i, j], valid[i, j], threshold)
            np.testing.assert_array_equal(keep[i, j], expected)
            suppressed_any |= bool((valid[i, j] & ~expected).any())
    assert suppressed_any  # the data really exercises suppression
    assert not (keep & ~valid).any()


def test_greedy_nms_chain_and_strict_threshold():
    # Each box overlaps the next with IoU 0.6 and the one after with IoU 1/3: greedy keeps
    # every other box (a suppressed box suppresses nothing), a fixed point reached only after
    # walking the whole chain.
    k = 15
    x0 = np.arange(k) * 0.25
    boxes = np.stack([x0, np.zeros(k), x0 + 1.0, np.ones(k)], axis=1).astype(np.float32)
    keep = np.asarray(nms_mask(boxes, np.ones(k, bool), iou_threshold=0.5))
    np.testing.assert_array_equal(keep, np.arange(k) % 2 == 0)
    np.testing.assert_array_equal(keep, ref.greedy_nms(boxes, np.ones(k, bool), 0.5))
    # An invalid first box suppresses nothing: the pattern shifts by one.
    valid = np.ones(k, bool)
    valid[0] = False
    keep = np.asarray(nms_mask(boxes, valid, iou_threshold=0.5))
    np.testing.assert_array_equal(keep, np.arange(k) % 2 == 1)
    # IoU exactly at the threshold does not suppress (strict >).
    pair = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0]], np.float32)  # IoU 0.5 exactly
    np.testing.assert_array_equal(nms_mask(pair, np.ones(2, bool), iou_threshold=0.5), [True, True])
    np.testing.assert_array_equal(nms_mask(pair, np.ones(2, bool), iou_threshold=0.49), [True, False])


# ----------------------------------------------------------------------------------------------
# batched_nms

P, C = 30, 4


def random_detection_inputs(seed, batch=2, num_priors=P, num_classes=C):
    rng = np.random.default_rng(seed)
    boxes = np.stack([clustered_boxes(rng, num_priors) for _ in range(batch)])
    scores = rng.uniform(0.0, 1.0, size=(batch, num_priors, num_classes)).astype(np.float32)
    scores[..., 0] = 0.999  # background: must be ignored
    return boxes, scores


def assert_detections_match(det, boxes, scores, **params):
    batch = boxes.shape[0]
    k = params["max_detections"]
    assert det.boxes.shape == (batch, k, 4) and det.scores.shape == (batch, k)
    assert det.classes.shape == (batch, k) and det.classes.dtype == jnp.int32
    assert det.num_detections.shape == (batch,) and det.num_detections.dtype == jnp.int32
    counts = []
    for b in range(batch):
        assert_clear_of_threshold(boxes[b], params["iou_threshold"])
        expected = ref.postprocess(boxes[b], scores[b], **params)
        n = int(det.num_detections[b])
        counts.append(n)
        assert n == len(expected)
        got_scores = np.asarray(det.scores[b])
        got_classes = np.asarray(det.classes[b])
        got_boxes = np.asarray(det.boxes[b])
        # As sets of (class, rounded box), then in order with the scores.
        got_set = {(int(c), tuple(np.round(x.astype(np.float64), 5).tolist()))
                   for c, x in zip(got_classes[:n], got_boxes[:n])}
        expected_set = {(c, tuple(np.round(x, 5).tolist())) for _, c, x in expected}
        assert got_set == expected_set
        np.testing.assert_allclose(got_scores[:n], [s for s, _, _ in expected], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got_classes[:n], [c for _, c, _ in expected])
        if n:
            np.testing.assert_allclose(got_boxes[:n], np.stack([x for _, _, x in expected]), atol=1e-6)
        assert np.all(np.diff(got_scores[:n]) <= 0)  # best first
        assert np.all(got_classes[:n] >= 1) and np.all(got_scores[:n] > params["score_threshold"])
        # Padding: score 0, class 0, box 0.
        np.testing.assert_array_equal(got_scores[n:], 0.0)
        np.testing.assert_array_equal(got_classes[n:], 0)
        np.testing.assert_array_equal(got_boxes[n:], 0.0)
    return counts


PARAMS = [
    # pre_nms_top_k > P, max_detections > (C - 1) * P: all survivors, the rest padding.
    ({"score_threshold": 0.2, "iou_threshold": 0.45, "pre_nms_top_k": 400, "max_detections": 200}, "fewer"),
    # top-k truncation per class and max_detections truncation.
    ({"score_threshold": 0.05, "iou_threshold": 0.5, "pre_nms_top_k": 5, "max_detections": 10}, "cut"),
    ({"score_threshold": 0.1, "iou_threshold": 0.3, "pre_nms_top_k": 10, "max_detections": 7}, "cut"),
    ({"score_threshold": 0.01, "iou_threshold": 0.7, "pre_nms_top_k": 30, "max_detections": 50}, "cut"),
    # A high score threshold: few candidates, fewer than max_detections survive.
    ({"score_threshold": 0.9, "iou_threshold": 0.45, "pre_nms_top_k": 8, "max_detections": 20}, "fewer"),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params, regime", PARAMS, ids=[f"p{i}" for i in range(len(PARAMS))])
def test_batched_nms_matches_reference(seed, params, regime):
    boxes, scores = random_detection_inputs(seed)
    det = batched_nms(boxes, scores, **params)
    counts = assert_detections_match(det, boxes, scores, **params)
    assert min(counts) > 0
    if regime == "fewer":  # fewer survive than requested: padding is exercised
        assert max(counts) < params["max_detections"]
    else:  # more survive than requested: the cut across classes is exercised
        assert counts == [params["max_detections"]] * len(counts)


def test_top_k_truncation_changes_the_result():
    boxes, scores = random_detection_inputs(3)
    params = {"score_threshold": 0.05, "iou_threshold": 0.5, "pre_nms_top_k": 3, "max_detections": 40}
    det = batched_nms(boxes, scores, **params)
    assert_detections_match(det, boxes, scores, **params)
    wide = dict(params, pre_nms_top_k=P)
    det_wide = batched_nms(boxes, scores, **wide)
    assert_detections_match(det_wide, boxes, scores, **wide)
    # With only 3 candidates per class, some boxes that survive NMS with 30 are cut.
    assert int(det.num_detections.sum()) < int(det_wide.num_detections.sum())
    assert np.all(np.asarray(det.num_detections) <= 3 * (C - 1))


def test_max_detections_cut_keeps_the_best():
    boxes, scores = random_detection_inputs(4)
    params = {"score_threshold": 0.05, "iou_threshold": 0.5, "pre_nms_top_k": P, "max_detections": 4}
    det = batched_nms(boxes, scores, **params)
    assert_detections_match(det, boxes, scores, **params)
    many = batched_nms(boxes, scores, **dict(params, max_detections=60))
    np.testing.assert_array_equal(det.num_detections, [4, 4])
    np.testing.assert_array_equal(det.scores, np.asarray(many.scores)[:, :4])
    np.testing.assert_array_equal(det.classes, np.asarray(many.classes)[:, :4])


def test_batched_nms_nothing_above_threshold():
    boxes, scores = random_detection_inputs(5)
    scores[..., 1:] *= 0.1  # all foreground scores below 0.1
    det = batched_nms(boxes, scores, score_threshold=0.1, iou_threshold=0.45, pre_nms_top_k=10, max_detections=5)
    np.testing.assert_array_equal(det.num_detections, [0, 0])
    np.testing.assert_array_equal(det.scores, 0.0)
    np.testing.assert_array_equal(det.classes, 0)
    np.testing.assert_array_equal(det.boxes, 0.0)


def test_batched_nms_same_box_different_classes_both_kept():
    boxes = np.array([[[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]], np.float32)
    scores = np.array([[[0.0, 0.9, 0.8], [0.0, 0.7, 0.1], [0.0, 0.05, 0.6]]], np.float32)
    det = batched_nms(boxes, scores, score_threshold=0.3, iou_threshold=0.5, pre_nms_top_k=10, max_detections=5)
    # Class 1: boxes 0 and 1 are identical, 1 is suppressed; class 2: box 0 and box 2 survive.
    assert int(det.num_detections[0]) == 3
    np.testing.assert_allclose(det.scores[0], [0.9, 0.8, 0.6, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(det.classes[0], [1, 2, 2, 0, 0])
    np.testing.assert_allclose(det.boxes[0, 2], boxes[0, 2])


def test_batched_nms_does_not_retrace():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def postprocess(boxes, scores):
        return nms.batched_nms(
            boxes, scores, score_threshold=0.1, iou_threshold=0.45, pre_nms_top_k=10, max_detections=8
        )

    first = postprocess(*random_detection_inputs(6))
    second = postprocess(*random_detection_inputs(7))
    assert not np.array_equal(np.asarray(first.scores), np.asarray(second.scores))
    with pytest.raises(AssertionError):  # another shape traces again, which chex reports
        postprocess(*random_detection_inputs(8, batch=3))


def test_greedy_nms_is_usable_under_vmap():
    boxes, _ = random_detection_inputs(9)
    valid = np.ones(boxes.shape[:2], bool)
    fn = jax.jit(jax.vmap(functools.partial(nms.greedy_nms_mask, iou_threshold=0.45)))
    keep = np.asarray(fn(boxes, valid))
    for b in range(boxes.shape[0]):
        np.testing.assert_array_equal(keep[b], ref.greedy_nms(boxes[b], valid[b], 0.45))


# ----------------------------------------------------------------------------------------------
# the shallow, deep and exhaustive stages of batched_nms


def ssd_like_inputs(scenario, seed, batch=3, num_priors=400, num_classes=8):
    """Boxes around a grid of priors and softmax scores: 'dense' (random logits: nearly every
    class passes 0.01), 'sparse' (background dominates), 'objects' (a few objects, each with many
    confident overlapping boxes of its class, weak clutter elsewhere: what a trained model gives)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.05, 0.95, (batch, num_priors, 2))
    sizes = rng.uniform(0.05, 0.4, (batch, num_priors, 2))
    boxes = np.clip(np.concatenate([centers - sizes / 2, centers + sizes / 2], -1), 0, 1).astype(np.float32)
    logits = rng.normal(0, 1, (batch, num_priors, num_classes))
    if scenario == "sparse":
        logits[..., 0] += 7.0
    elif scenario == "objects":
        logits[..., 0] += 4.0
        for b in range(batch):
            for _ in range(3):
                box = clustered_boxes(rng, 1, num_clusters=1, jitter=0.1)[0]
                overlap = ref.pairwise_iou(boxes[b], box[None])[:, 0]
                logits[b, :, rng.integers(1, num_classes)] += 12 * overlap
    scores = np.exp(logits - logits.max(-1, keepdims=True))
    return boxes, (scores / scores.sum(-1, keepdims=True)).astype(np.float32)


STAGED = {"score_threshold": 0.01, "iou_threshold": 0.45, "pre_nms_top_k": 100, "max_detections": 40}


@functools.partial(jax.jit, static_argnames=("shallow_depth", "deep_rows"))
def staged_nms(boxes, scores, shallow_depth, deep_rows):
    return nms.nms_stages(boxes, scores, shallow_depth=shallow_depth, deep_rows=deep_rows, **STAGED)


@pytest.mark.parametrize("scenario", ["dense", "sparse", "objects"])
def test_every_stage_gives_the_exhaustive_result(scenario):
    boxes, scores = ssd_like_inputs(scenario, seed=11)
    exhaustive, stage = staged_nms(boxes, scores, shallow_depth=STAGED["pre_nms_top_k"], deep_rows=0)
    assert int(stage) == 2
    assert_detections_match(exhaustive, boxes, scores, **STAGED)  # against the numpy reference
    stages = set()
    for depth in (2, 8, 32):
        for rows in (1, 7):
            detections, stage = staged_nms(boxes, scores, shallow_depth=depth, deep_rows=rows)
            stages.add(int(stage))
            for ours, expected in zip(detections, exhaustive):
                np.testing.assert_array_equal(ours, expected)
    # Each stage really ran; a class with many confident boxes is never settled by the shallow stage.
    assert stages == ({1, 2} if scenario == "objects" else {0, 1, 2}), f"{scenario}: stages seen {stages}"


def test_equal_scores_across_the_shallow_cut():
    """Scores tied at the shallow depth: whichever boxes top_k took, the result is the exhaustive one."""
    boxes, scores = ssd_like_inputs("dense", seed=12, batch=2)
    scores[:, :, 1] = 0.0
    scores[:, :20, 1] = 0.5  # class 1: twenty boxes of equal score, cut at depth 8
    exhaustive, _ = staged_nms(boxes, scores, shallow_depth=STAGED["pre_nms_top_k"], deep_rows=0)
    assert_detections_match(exhaustive, boxes, scores, **STAGED)
    detections, stage = staged_nms(boxes, scores, shallow_depth=8, deep_rows=7)
    assert int(stage) in (1, 2)
    for ours, expected in zip(detections, exhaustive):
        np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("k", [100, 200])  # 4 and 7 words of 32: whole blocks of nms.BLOCK_WORDS, and a last part
def test_greedy_nms_over_several_blocks(k):
    assert nms.BLOCK_WORDS == 2  # the test's sizes are chosen for it
    rng = np.random.default_rng(13)
    boxes = clustered_boxes(rng, 3 * k, num_clusters=6 * k // 100).reshape(3, k, 4)
    valid = rng.uniform(size=(3, k)) < 0.9
    keep = np.asarray(nms_mask(boxes, valid, iou_threshold=0.45))
    for b in range(3):
        assert_clear_of_threshold(boxes[b], 0.45)
        np.testing.assert_array_equal(keep[b], ref.greedy_nms(boxes[b], valid[b], 0.45))


@pytest.mark.parametrize("k", [1, 5, 16, 17, 40, 65])
def test_top_candidates_narrowed_to_groups_equal_one_top_k(k):
    rng = np.random.default_rng(14)
    scores = rng.uniform(size=(2, 3, 1003)).astype(np.float32)  # not a multiple of the group size
    scores[0, 0, 100:140] = 0.75  # equal scores within and across groups
    scores[0, 0, :50] = 0.99
    scores[1, 2] = 0.5  # a row of one value
    scores[1, 1, -3:] = 2.0  # the best at the padded end
    one = nms.top_candidates(scores, k, narrow=False)
    narrowed = jax.jit(functools.partial(nms.top_candidates, k=k, narrow=True))(scores)
    for a, b in zip(one, narrowed):
        np.testing.assert_array_equal(a, b)
    for b, c in [(0, 0), (1, 2), (1, 1)]:  # best first, then the lower index
        np.testing.assert_array_equal(one[1][b, c], np.lexsort((np.arange(1003), -scores[b, c]))[:k])


@pytest.mark.parametrize("scenario", ["dense", "sparse", "objects"])
def test_the_portable_version_for_exported_models_gives_the_same_detections(scenario):
    boxes, scores = ssd_like_inputs(scenario, seed=11)
    expected, _ = staged_nms(boxes, scores, shallow_depth=8, deep_rows=3)
    portable = jax.jit(functools.partial(nms.portable_batched_nms, **STAGED))(boxes, scores)
    for ours, theirs in zip(portable, expected):
        np.testing.assert_array_equal(ours, theirs)
