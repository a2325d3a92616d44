"""VOC AP and mAP (ssd_jax.evaluation.voc) against values computed by hand."""

import numpy as np
import pytest

from ssd_jax.evaluation import ImageDetections, ImageGroundTruth, evaluate_voc, precision_recall_curves, voc_ap


# The VOC2007 AP adds 11 precisions one by one, as voc_eval.py does: a perfect AP is 1.0000000000000002.
def approx(expected):
    return pytest.approx(expected, abs=1e-12)


# Unit boxes side by side on a line: disjoint, so each detection can only hit the box it copies.
BOX = [np.array([4.0 * i, 0.0, 4.0 * i + 2.0, 2.0]) for i in range(6)]


def dets(image_id, boxes, scores, classes):
    return ImageDetections(image_id=image_id, boxes=boxes, scores=scores, classes=classes)


def truth(image_id, boxes, labels, difficult=None):
    return ImageGroundTruth(image_id=image_id, boxes=boxes, labels=labels, difficult=difficult)


def both_aps(detections, ground_truths, num_classes=2, label=1, **options):
    ap07 = evaluate_voc(detections, ground_truths, num_classes, use_07_metric=True, **options)
    ap = evaluate_voc(detections, ground_truths, num_classes, use_07_metric=False, **options)
    return ap07["ap"][label], ap["ap"][label]


def test_perfect_detections_give_ap_one():
    ground_truths = [truth(0, BOX[:3], [1, 2, 1]), truth(1, BOX[1:3], [2, 2])]
    detections = [dets(t.image_id, t.boxes, np.linspace(0.9, 0.5, len(t.labels)), t.labels) for t in ground_truths]
    for use_07_metric in (True, False):
        result = evaluate_voc(detections, ground_truths, 3, use_07_metric=use_07_metric)
        assert result["ap"] == approx({1: 1.0, 2: 1.0}) and result["mAP"] == approx(1.0)


def test_no_detections_give_ap_zero():
    ground_truths = [truth(0, BOX[:2], [1, 1])]
    assert both_aps([], ground_truths) == (0.0, 0.0)
    assert both_aps([dets(0, np.zeros((0, 4)), [], [])], ground_truths) == (0.0, 0.0)


def test_hand_computed_ranking():
    # 4 objects in two images; five detections ranked TP, FP, TP, FP, TP:
    #   recall    1/4  1/4  2/4  2/4  3/4
    #   precision 1    1/2  2/3  2/4  3/5
    # 11-point: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> 2/3; t = .6, .7 -> 3/5; t = .8, .9, 1 -> 0
    #   AP07 = (3 + 3 * 2/3 + 2 * 3/5) / 11 = 6.2 / 11 = 31/55
    # all-point: envelope 1 on (0, 1/4], 2/3 on (1/4, 2/4], 3/5 on (2/4, 3/4]
    #   AP = (1 + 2/3 + 3/5) / 4 = 17/30
    ground_truths = [truth(0, BOX[:2], [1, 1]), truth(1, BOX[:2], [1, 1])]
    detections = [
        dets(0, [BOX[0], BOX[4], BOX[1]], [0.9, 0.8, 0.7], [1, 1, 1]),  # TP, FP (no overlap), TP
        dets(1, [BOX[5], BOX[0]], [0.6, 0.5], [1, 1]),  # FP, TP
    ]
    ap07, ap = both_aps(detections, ground_truths)
    assert ap07 == pytest.approx(31 / 55, abs=1e-12)
    assert ap == pytest.approx(17 / 30, abs=1e-12)
    curve = precision_recall_curves(detections, ground_truths, 2)[1]
    np.testing.assert_allclose(curve.recall, [1 / 4, 1 / 4, 2 / 4, 2 / 4, 3 / 4])
    np.testing.assert_allclose(curve.precision, [1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
    np.testing.assert_array_equal(curve.scores, [0.9, 0.8, 0.7, 0.6, 0.5])


def test_voc_ap_directly():
    # Same curve as above, given directly.
    recall, precision = [0.25, 0.25, 0.5, 0.5, 0.75], [1, 0.5, 2 / 3, 0.5, 0.6]
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(31 / 55, abs=1e-12)
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(17 / 30, abs=1e-12)
    # Recall 0.3 = 3/10: the exact tenths reach t = 0.3 (t = 0, .1, .2, .3 -> 4/11); voc_eval.py's
    # np.arange(0, 1.1, 0.1) has 0.30000000000000004 there, which 0.3 misses (3/11).
    assert voc_ap([3 / 10], [1.0], use_07_metric=True, rules="exact") == pytest.approx(4 / 11, abs=1e-12)
    assert voc_ap([3 / 10], [1.0], use_07_metric=True) == pytest.approx(3 / 11, abs=1e-12)
    with pytest.raises(ValueError, match="rules must be one of"):
        voc_ap([3 / 10], [1.0], use_07_metric=True, rules="devkit")
    assert voc_ap([], [], use_07_metric=True) == 0.0 and voc_ap([], [], use_07_metric=False) == 0.0


def test_an_iou_of_exactly_the_threshold_matches_under_the_exact_rules_only():
    # Continuous IoUs (no "+1"); tests/test_evaluation_trust.py has the devkit's.
    ground_truths = [truth(0, [[0.0, 0.0, 2.0, 1.0]], [1])]
    half = [dets(0, [[0.0, 0.0, 1.0, 1.0]], [0.9], [1])]  # IoU = 1 / 2
    # VOCevaldet.m's >= matches, voc_eval.py's > does not.
    assert both_aps(half, ground_truths, iou_convention="continuous", rules="exact") == approx((1.0, 1.0))
    assert both_aps(half, ground_truths, iou_convention="continuous") == (0.0, 0.0)
    less = [dets(0, [[0.0, 0.0, 0.99, 1.0]], [0.9], [1])]  # IoU = 0.495
    assert both_aps(less, ground_truths, iou_convention="continuous", rules="exact") == (0.0, 0.0)


def test_difficult_objects_are_neither_rewarded_nor_punished():
    # Image 0: an ordinary object BOX[0] and a difficult one BOX[1].
    ground_truths = [truth(0, [BOX[0], BOX[1]], [1, 1], difficult=[False, True])]
    on_ordinary = dets(0, [BOX[0]], [0.5], [1])
    # The best detection hits only the difficult object: ignored, so precision stays 1 at rank 1.
    with_difficult_hit = dets(0, [BOX[1], BOX[0]], [0.9, 0.5], [1, 1])
    assert both_aps([on_ordinary], ground_truths) == approx((1.0, 1.0))  # the missed difficult one costs nothing
    assert both_aps([with_difficult_hit], ground_truths) == approx((1.0, 1.0))
    curve = precision_recall_curves([with_difficult_hit], ground_truths, 2)[1]
    assert curve.num_positives == 1  # the difficult object is not in the recall denominator
    np.testing.assert_array_equal(curve.scores, [0.5])  # the ignored detection is not ranked
    np.testing.assert_array_equal(curve.recall, [1.0])
    # For contrast, the same objects, neither difficult: recall 1/2 -> AP07 6/11, AP 1/2; and the
    # detection on BOX[1] is then a true positive.
    both = [truth(0, [BOX[0], BOX[1]], [1, 1], difficult=[False, False])]
    assert both_aps([on_ordinary], both) == pytest.approx((6 / 11, 0.5), abs=1e-12)
    assert both_aps([with_difficult_hit], both) == approx((1.0, 1.0))


def test_difficult_only_class_is_left_out_of_the_map():
    ground_truths = [truth(0, [BOX[0], BOX[1]], [1, 2], difficult=[False, True])]
    result = evaluate_voc([dets(0, [BOX[0]], [0.9], [1])], ground_truths, 3)
    assert result["num_positives"] == {1: 1, 2: 0}
    assert np.isnan(result["ap"][2]) and result["mAP"] == approx(1.0)


def test_duplicates_are_false_positives():
    # Two objects in two images; BOX[0] of image 0 is detected twice:
    #   TP (0.9), FP duplicate (0.8), TP (0.7): recall 1/2, 1/2, 1; precision 1, 1/2, 2/3
    #   AP07 = (6 * 1 + 5 * 2/3) / 11 = 28/33; AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    ground_truths = [truth(0, [BOX[0]], [1]), truth(1, [BOX[0]], [1])]
    detections = [dets(0, [BOX[0], BOX[0] + 0.1], [0.9, 0.8], [1, 1]), dets(1, [BOX[0]], [0.7], [1])]
    ap07, ap = both_aps(detections, ground_truths)
    assert ap07 == pytest.approx(28 / 33, abs=1e-12) and ap == pytest.approx(5 / 6, abs=1e-12)


def test_a_duplicate_does_not_fall_back_to_its_second_best_object():
    # The devkit's rule: a detection takes its best-overlapping object; if that one is taken the
    # detection is a false positive even though another free object overlaps it with IoU >= 0.5.
    first, second = [0.0, 0.0, 10.0, 10.0], [0.0, 2.0, 10.0, 12.0]  # IoU(first, second) = 80/120
    ground_truths = [truth(0, [first, second], [1, 1])]
    between = [0.0, 0.5, 10.0, 10.5]  # IoU 95/105 with first, 85/115 with second
    detections = [dets(0, [first, between], [0.9, 0.8], [1, 1])]
    curve = precision_recall_curves(detections, ground_truths, 2)[1]
    np.testing.assert_allclose(curve.recall, [0.5, 0.5])
    np.testing.assert_allclose(curve.precision, [1.0, 0.5])


def test_detections_on_images_without_objects_are_false_positives():
    # Image 1 has no objects; its detection ranks first: FP, TP -> recall 0, 1; precision 0, 1/2.
    # AP07: every t is reached at recall 1, best precision 1/2 -> 1/2; AP = 1 * 1/2.
    ground_truths = [truth(0, [BOX[0]], [1]), truth(1, np.zeros((0, 4)), [])]
    detections = [dets(0, [BOX[0]], [0.5], [1]), dets(1, [BOX[0]], [0.9], [1])]
    assert both_aps(detections, ground_truths) == approx((0.5, 0.5))


def test_other_classes_and_images_do_not_interfere():
    # A class-2 detection on a class-1 object is a class-2 false positive, not a class-1 match.
    ground_truths = [truth(0, [BOX[0]], [1]), truth(1, [BOX[1]], [2])]
    detections = [dets(0, [BOX[0], BOX[0]], [0.9, 0.95], [1, 2]), dets(1, [BOX[1]], [0.5], [2])]
    result = evaluate_voc(detections, ground_truths, 3, use_07_metric=False)
    assert result["ap"][1] == 1.0
    assert result["ap"][2] == pytest.approx(0.5)  # FP then TP
    assert result["mAP"] == pytest.approx(0.75)


def test_class_without_objects_is_excluded_from_the_map():
    ground_truths = [truth(0, [BOX[0]], [1])]
    detections = [dets(0, [BOX[0], BOX[3]], [0.9, 0.8], [1, 2])]  # class 2: a detection, no object
    result = evaluate_voc(detections, ground_truths, 3)
    assert result["ap"][1] == approx(1.0) and np.isnan(result["ap"][2])
    assert result["mAP"] == approx(1.0)  # not (1 + 0) / 2
    assert np.isnan(evaluate_voc([], [truth(0, np.zeros((0, 4)), [])], 3)["mAP"])


def test_records_may_be_dicts_and_unknown_images_are_rejected():
    ground_truths = [dict(image_id=7, boxes=[BOX[0]], labels=[1])]
    records = [dict(image_id=7, boxes=[BOX[0]], scores=[0.9], classes=[1])]
    assert evaluate_voc(records, ground_truths, 2)["mAP"] == approx(1.0)
    with pytest.raises(ValueError, match="image 8"):
        evaluate_voc([dets(8, [BOX[0]], [0.9], [1])], ground_truths, 2)


def voc_eval_reference(detections, ground_truths, label, use_07_metric):
    """py-faster-rcnn's voc_eval for one class, transcribed loop for loop, with the "exact" rules (IoU
    >= 0.5, exact tenths, a stable sort) and no +1 (the continuous convention);
    tests/test_evaluation_trust.py restates voc_eval.py itself, with the devkit's "+1")."""
    records = {t.image_id: dict(bbox=t.boxes[t.labels == label], difficult=t.difficult[t.labels == label],
                                det=[False] * int(np.sum(t.labels == label))) for t in ground_truths}
    npos = sum(int(np.sum(~r["difficult"])) for r in records.values())
    entries = [(d.image_id, s, b) for d in detections for b, s, c in zip(d.boxes, d.scores, d.classes) if c == label]
    entries.sort(key=lambda e: -e[1])
    tp, fp = np.zeros(len(entries)), np.zeros(len(entries))
    for i, (image_id, _, bb) in enumerate(entries):
        r = records[image_id]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate(r["bbox"]):
            iw = max(min(bb[2], g[2]) - max(bb[0], g[0]), 0.0)
            ih = max(min(bb[3], g[3]) - max(bb[1], g[1]), 0.0)
            union = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - iw * ih
            if iw * ih / union > ovmax:
                ovmax, jmax = iw * ih / union, j
        if ovmax >= 0.5:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[i], r["det"][jmax] = 1.0, True
                else:
                    fp[i] = 1.0
        else:
            fp[i] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall, precision = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        return sum(np.max(precision[recall >= t], initial=0.0) / 11 for t in np.arange(11) / 10)
    mrec, mpre = np.concatenate(([0.0], recall, [1.0])), np.concatenate(([0.0], precision, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


@pytest.mark.parametrize("seed", range(3))
def test_random_scenes_agree_with_a_loop_transcription_of_voc_eval(seed):
    rng = np.random.default_rng(seed)

    def corners(n):  # integer boxes on a small grid: many overlaps, some IoUs exactly 0.5
        return np.sort(rng.integers(0, 8, (n, 2, 2)), axis=1).reshape(n, 4) + [0, 0, 1, 1]

    def near(boxes, n):  # n jittered copies of some of the boxes
        if len(boxes) == 0:
            return np.zeros((0, 4))
        jittered = boxes[rng.integers(0, len(boxes), n)] + rng.integers(-1, 2, (n, 4))
        return np.concatenate([jittered[:, :2], np.maximum(jittered[:, 2:], jittered[:, :2] + 1)], axis=1)

    ground_truths, detections = [], []
    for image_id in range(10):
        m, n = rng.integers(0, 5), rng.integers(0, 12)
        ground_truths.append(truth(image_id, corners(m), rng.integers(1, 3, m), rng.random(m) < 0.3))
        boxes = np.concatenate([corners(n // 2), near(ground_truths[-1].boxes, n - n // 2)])
        # Coarse scores, so some tie: both sorts are stable (py-faster-rcnn's argsort is not).
        scores = rng.integers(1, 50, len(boxes)) / 50
        detections.append(dets(image_id, boxes, scores, rng.integers(1, 3, len(boxes))))
    for use_07_metric in (True, False):
        ours = evaluate_voc(detections, ground_truths, 3, use_07_metric=use_07_metric,
                            iou_convention="continuous", rules="exact")["ap"]
        for label in (1, 2):
            expected = voc_eval_reference(detections, ground_truths, label, use_07_metric)
            assert ours[label] == pytest.approx(expected, abs=1e-12, nan_ok=True)
