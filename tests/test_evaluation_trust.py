"""Whether the evaluation's numbers can be trusted: VOC mAP equal to py-faster-rcnn's voc_eval.py on
VOC-like pixel data, bad input refused with clear errors, empty splits and broken checkpoints
failing loudly in experiments/evaluate.py, and torchvision's 91-slot COCO classes mapped to ours."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_coco_metrics import pycocotools_stats

import ssd_jax
from ssd_jax import checkpoint, configs
from ssd_jax.classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from ssd_jax.evaluation import (
    Evaluator,
    ImageDetections,
    ImageGroundTruth,
    coco_category_ids_to_classes,
    evaluate_coco,
    evaluate_voc,
)
from ssd_jax.evaluation.evaluator import detection_records, ground_truth_records
from ssd_jax.nms import Detections

NUM_VOC_CLASSES = 21  # 20 classes and background

# ----------------------------------------------------------------------------------------------
# py-faster-rcnn's voc_eval.py, restated


def voc_eval_restated(detections, ground_truths, label, use_07_metric, ovthresh=0.5):
    """AP of one class as py-faster-rcnn's ``lib/datasets/voc_eval.py`` computes it.

    Its own data structures and loops, float64: per-image records with a 'det' list, ranking by
    ``np.argsort(-confidence)``, the "+1" inclusive-pixel IoU, a match needing IoU > ovthresh
    (strictly), and its ``voc_ap`` with the 11 thresholds ``np.arange(0., 1.1, 0.1)``. One change:
    precision divides by max(tp + fp, eps), as later copies (Detectron's) do, where the original's
    tp / (tp + fp) is NaN while only difficult objects have been hit.
    """
    class_recs, npos = {}, 0
    for truth in ground_truths:
        mine = truth.labels == label
        bbox = np.array(truth.boxes[mine], dtype=np.float64).reshape(-1, 4)
        difficult = np.array(truth.difficult[mine]).astype(bool)
        npos = npos + sum(~difficult)
        class_recs[truth.image_id] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}

    image_ids, confidence, bb_list = [], [], []
    for record in detections:
        for box, score, cls in zip(record.boxes, record.scores, record.classes):
            if cls == label:
                image_ids.append(record.image_id)
                confidence.append(float(score))
                bb_list.append([float(v) for v in box])
    confidence = np.array(confidence)
    BB = np.array(bb_list, dtype=np.float64).reshape(-1, 4)  # noqa: N806  (voc_eval's names)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]  # noqa: N806
    image_ids = [image_ids[x] for x in sorted_ind]

    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]  # noqa: N806
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)  # noqa: N806
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


# ----------------------------------------------------------------------------------------------
# VOC-like pixel data

VOC_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (281, 500), (500, 486)]  # (height, width)


def voc_like_scene(seed, num_images=200):
    """Ground truth as VOC's annotation files give it and detections near it, all in pixels.

    Objects: integer 1-based inclusive corners, 20 classes, sizes from 6 px to most of the image
    (VOC has many small objects, where the "+1" matters), about 12% difficult, then a few more so
    that each class has a multiple of 10 non-difficult objects (recalls of exactly 0.3, 0.6 and
    0.7 then occur: where voc_eval.py's thresholds part from the exact tenths). Detections: jittered
    float copies of most objects (some of the wrong class, some duplicates) and random boxes,
    scores rounded to 0.01 so that many tie (voc_eval.py's unstable argsort decides their order).
    """
    rng = np.random.default_rng(seed)
    images = []
    for image_id in range(num_images):
        height, width = VOC_SIZES[rng.integers(len(VOC_SIZES))]
        m = int(rng.integers(1, 7))
        size = np.exp(rng.uniform(np.log(6), np.log(0.9 * np.array([width, height])), (m, 2))).astype(int)
        low = 1 + (rng.random((m, 2)) * (np.array([width, height]) - size)).astype(int)
        boxes = np.concatenate([low, low + size - 1], axis=1).astype(np.float64)  # inclusive xmax, ymax
        labels = rng.integers(1, NUM_VOC_CLASSES, m)
        difficult = rng.random(m) < 0.12
        det_boxes, det_scores, det_classes = [], [], []
        for box, label in zip(boxes, labels):
            for copy in range(int(rng.choice([0, 1, 1, 1, 2, 3]))):
                extent = np.tile(box[2:] - box[:2] + 1, 2)
                spread = 0.06 if rng.random() < 0.7 else 0.2
                det_boxes.append(box + rng.normal(0, spread, 4) * extent)
                det_scores.append(round(rng.uniform(0.3, 1.0) if copy == 0 else rng.uniform(0.05, 0.8), 2))
                det_classes.append(label if rng.random() < 0.9 else rng.integers(1, NUM_VOC_CLASSES))
        for _ in range(int(rng.integers(0, 5))):
            xy = rng.uniform(1, [width - 10, height - 10])
            det_boxes.append(np.concatenate([xy, xy + rng.uniform(5, 150, 2)]))
            det_scores.append(round(rng.uniform(0.01, 0.7), 2))
            det_classes.append(rng.integers(1, NUM_VOC_CLASSES))
        images.append(dict(image_id=1000 + image_id, height=height, width=width, boxes=boxes, labels=labels,
                           difficult=difficult, det_boxes=np.array(det_boxes).reshape(-1, 4),
                           det_scores=np.array(det_scores), det_classes=np.array(det_classes, np.int64)))
    for label in range(1, NUM_VOC_CLASSES):  # round each class's positives down to a multiple of 10
        count = sum(int(np.sum((im["labels"] == label) & ~im["difficult"])) for im in images)
        for im in images:
            for k in np.flatnonzero((im["labels"] == label) & ~im["difficult"]):
                if count % 10:
                    im["difficult"][k], count = True, count - 1
    return images


def records(scene):
    detections = [ImageDetections(im["image_id"], im["det_boxes"], im["det_scores"], im["det_classes"])
                  for im in scene]
    ground_truths = [ImageGroundTruth(im["image_id"], im["boxes"], im["labels"], im["difficult"],
                                      height=im["height"], width=im["width"]) for im in scene]
    return detections, ground_truths


def restated_aps(detections, ground_truths, use_07_metric):
    return {label: voc_eval_restated(detections, ground_truths, label, use_07_metric)
            for label in range(1, NUM_VOC_CLASSES)}


@pytest.fixture(scope="module")
def scene():
    scene = voc_like_scene(0)
    detections, ground_truths = records(scene)
    positives = [sum(int(np.sum((t.labels == k) & ~t.difficult)) for t in ground_truths)
                 for k in range(1, NUM_VOC_CLASSES)]
    assert all(n >= 20 and n % 10 == 0 for n in positives), positives  # recalls of exactly 0.3, 0.6, 0.7
    scores = np.concatenate([d.scores for d in detections])
    assert len(scores) - len(np.unique(scores)) > 500  # ties
    assert sum(np.sum(t.difficult) for t in ground_truths) > 50
    return scene


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_voc_map_equals_voc_eval_py_bit_for_bit_on_voc_like_pixel_data(scene, use_07_metric):
    detections, ground_truths = records(scene)
    expected = restated_aps(detections, ground_truths, use_07_metric)
    assert 0.2 < np.mean(list(expected.values())) < 0.8  # hits and misses: the comparison means something

    ours = evaluate_voc(detections, ground_truths, NUM_VOC_CLASSES, use_07_metric=use_07_metric)  # the defaults
    assert ours["ap"] == {k: float(v) for k, v in expected.items()}  # every class, bit for bit
    assert ours["mAP"] == np.mean(list(expected.values()))

    # The "exact" rules (exact tenths, IoU >= 0.5, a stable sort) are another metric on this data.
    exact = evaluate_voc(detections, ground_truths, NUM_VOC_CLASSES, use_07_metric=use_07_metric, rules="exact")
    changed = [k for k in expected if exact["ap"][k] != expected[k]]
    if use_07_metric:  # the thresholds 0.3, 0.6, 0.7 are reached at exactly those recalls
        assert len(changed) >= 3 and exact["mAP"] > ours["mAP"], changed
    else:  # the all-point AP has no thresholds: only the order of tied scores can change it
        assert abs(exact["mAP"] - ours["mAP"]) < 0.01

    # The continuous IoU (no "+1") is a different metric on the same pixels: lower IoUs, a lower mAP.
    continuous = evaluate_voc(detections, ground_truths, NUM_VOC_CLASSES, use_07_metric=use_07_metric,
                              iou_convention="continuous")
    assert ours["mAP"] - continuous["mAP"] > 1e-3
    assert max(abs(continuous["ap"][k] - expected[k]) for k in expected) > 1e-3


def test_the_devkit_iou_counts_inclusive_pixels():
    # Pixels 0..9 square against x 3.2..12.2: devkit widths 10 and intersection 9 - 3.2 + 1 = 6.8,
    # IoU 68 / (100 + 100 - 68) = 0.515, a match; continuous: 5.8 * 9 / (81 + 81 - 52.2) = 0.475, none.
    truth = [ImageGroundTruth(1, [[0, 0, 9, 9]], [1])]
    shifted = [ImageDetections(1, [[3.2, 0, 12.2, 9]], [0.9], [1])]
    assert evaluate_voc(shifted, truth, 2)["mAP"] == pytest.approx(1.0)
    assert evaluate_voc(shifted, truth, 2, iou_convention="continuous")["mAP"] == 0.0
    assert voc_eval_restated(shifted, truth, 1, use_07_metric=True) == pytest.approx(1.0)
    further = [ImageDetections(1, [[3.8, 0, 12.8, 9]], [0.9], [1])]  # devkit 62 / 138 = 0.449
    assert evaluate_voc(further, truth, 2)["mAP"] == 0.0
    # A box one pixel column wide has width 1, not 0: it matches itself.
    thin = [ImageGroundTruth(1, [[5, 5, 5, 40]], [1])]
    itself = [ImageDetections(1, [[5, 5, 5, 40]], [0.9], [1])]
    assert evaluate_voc(itself, thin, 2)["mAP"] == pytest.approx(1.0)
    assert evaluate_voc(itself, thin, 2, iou_convention="continuous")["mAP"] == 0.0


def test_the_devkit_convention_refuses_normalised_boxes():
    truth = [ImageGroundTruth(1, [[0.1, 0.1, 0.4, 0.5]], [1])]
    dets = [ImageDetections(1, [[0.12, 0.1, 0.4, 0.5]], [0.9], [1])]
    with pytest.raises(ValueError, match='look normalised.*iou_convention="continuous"'):
        evaluate_voc(dets, truth, 2)
    assert evaluate_voc(dets, truth, 2, iou_convention="continuous")["mAP"] == pytest.approx(1.0)
    far = [ImageDetections(1, [[0.6, 0.6, 0.9, 0.9]], [0.9], [1])]  # no overlap at all
    assert evaluate_voc(far, truth, 2, iou_convention="continuous")["mAP"] == 0.0
    with pytest.raises(ValueError, match="iou_convention must be one of"):
        evaluate_voc(dets, truth, 2, iou_convention="pixels")


def test_evaluator_in_original_pixels_equals_voc_eval_py(scene):
    # The evaluator's path: normalised float32 boxes (as the data pipeline and detect give them)
    # times the original size, which turns 48 into 47.99999; the devkit IoU does not notice.
    max_objects = max(len(im["labels"]) for im in scene)
    max_dets = max(len(im["det_scores"]) for im in scene)
    n = len(scene)
    sizes = np.array([[im["height"], im["width"]] for im in scene], np.int32)
    scale = np.array([[im["width"], im["height"]] * 2 for im in scene], np.float64)[:, None, :]

    def padded(key, count, shape_tail=(), dtype=np.float64):
        out = np.zeros((n, count, *shape_tail), dtype)
        for i, im in enumerate(scene):
            out[i, :len(im[key])] = im[key]
        return out

    gt_boxes = padded("boxes", max_objects, (4,))
    batch = {
        "image": np.zeros((n, 8, 8, 3), np.uint8),
        "boxes": (gt_boxes / scale).astype(np.float32),
        "labels": padded("labels", max_objects, dtype=np.int32),
        "mask": np.arange(max_objects)[None, :] < np.array([len(im["labels"]) for im in scene])[:, None],
        "difficult": padded("difficult", max_objects, dtype=bool),
        "image_id": np.array([im["image_id"] for im in scene], np.int64),
        "original_size": sizes,
    }
    detections = Detections(
        boxes=(padded("det_boxes", max_dets, (4,)) / scale).astype(np.float32),
        scores=padded("det_scores", max_dets, dtype=np.float32),
        classes=padded("det_classes", max_dets, dtype=np.int32),
        num_detections=np.array([len(im["det_scores"]) for im in scene], np.int32),
    )
    truths = ground_truth_records(batch)
    dets = detection_records(detections, batch["image_id"], sizes)
    rounding = np.max(np.abs(np.concatenate([t.boxes for t in truths]) - np.concatenate([im["boxes"] for im in scene])))
    assert 0 < rounding < 1e-3  # not exact integers any more, as in real evaluations

    evaluator = Evaluator(configs.ssd_tiny(num_classes=NUM_VOC_CLASSES), batch_size=8)
    metrics = evaluator.metrics(dets, truths)
    exact_detections, exact_truths = records(scene)
    for key, use_07_metric in (("voc07_mAP", True), ("voc_mAP", False)):
        expected = np.mean(list(restated_aps(exact_detections, exact_truths, use_07_metric).values()))
        assert metrics[key] == pytest.approx(expected, abs=1e-4)
    exact = Evaluator(configs.ssd_tiny(num_classes=NUM_VOC_CLASSES), batch_size=8, voc_rules="exact")
    assert exact.metrics(dets, truths)["voc07_mAP"] > metrics["voc07_mAP"] + 1e-4
    continuous = Evaluator(configs.ssd_tiny(num_classes=NUM_VOC_CLASSES), batch_size=8,
                           iou_convention="continuous").metrics(dets, truths)
    assert metrics["voc07_mAP"] - continuous["voc07_mAP"] > 1e-3
    with pytest.raises(ValueError, match="iou_convention"):
        Evaluator(configs.ssd_tiny(num_classes=NUM_VOC_CLASSES), batch_size=8, iou_convention="inclusive")


# ----------------------------------------------------------------------------------------------
# Images without ground truth, non-finite values


def test_detections_on_an_image_without_any_ground_truth_are_false_positives():
    # The only image has no objects: no class has positives, so every AP is undefined.
    result = evaluate_voc([ImageDetections(1, [[10, 10, 50, 50]], [0.9], [1])], [ImageGroundTruth(1, [], [])], 3)
    assert np.isnan(result["mAP"]) and np.isnan(result["ap"][1]) and result["num_positives"] == {1: 0, 2: 0}
    np.testing.assert_array_equal(result["precision"][1], [0.0])  # one false positive
    # Next to an image with objects the detection costs precision: FP (0.9) then TP (0.5).
    ground_truths = [ImageGroundTruth(1, [], []), ImageGroundTruth(2, [[10, 10, 50, 50]], [1])]
    detections = [ImageDetections(1, [[10, 10, 50, 50]], [0.9], [1]),
                  ImageDetections(2, [[10, 10, 50, 50]], [0.5], [1])]
    result = evaluate_voc(detections, ground_truths, 2, use_07_metric=False)
    np.testing.assert_allclose(result["precision"][1], [0.0, 0.5])
    assert result["mAP"] == pytest.approx(0.5)


def test_coco_detections_on_an_image_without_objects_are_false_positives():
    ground_truths = [ImageGroundTruth(1, [[10, 10, 50, 60]], [1], height=100, width=100),
                     ImageGroundTruth(2, [], [], height=80, width=120)]
    detections = [ImageDetections(1, [[10, 10, 50, 60]], [0.5], [1]), ImageDetections(2, [[5, 5, 40, 40]], [0.9], [1])]
    ours = evaluate_coco(detections, ground_truths)
    expected = pycocotools_stats(
        images=[{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 80, "width": 120}],
        annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 50], "area": 2000, "iscrowd": 0}],
        results=[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 50], "score": 0.5},
                 {"image_id": 2, "category_id": 1, "bbox": [5, 5, 35, 35], "score": 0.9}],
        category_ids=[1])
    np.testing.assert_allclose(list(ours.values()), expected, atol=1e-9)
    assert ours["AP"] < 0.6 and ours["AR100"] == pytest.approx(1.0)  # the false positive ranks first


def test_coco_detections_on_an_unknown_image_are_refused_clearly():
    ground_truths = [ImageGroundTruth(1, [[10, 10, 50, 60]], [1], height=100, width=100)]
    with pytest.raises(ValueError, match="detections for image 7, which has no ground-truth record"):
        evaluate_coco([ImageDetections(7, [[10, 10, 50, 60]], [0.5], [1])], ground_truths)
    with pytest.raises(ValueError, match="image 7, which has no ground-truth record"):
        evaluate_voc([ImageDetections(7, [[10, 10, 50, 60]], [0.5], [1])], ground_truths, 2)


@pytest.mark.parametrize("metric", ["voc", "coco"])
def test_non_finite_scores_and_boxes_are_refused_naming_the_image(metric):
    ground_truths = [ImageGroundTruth(4, [[10, 10, 50, 60]], [1], height=100, width=100)]

    def evaluate(boxes, scores):
        detections = [dict(image_id=4, boxes=boxes, scores=scores, classes=[1, 1])]
        if metric == "voc":
            return evaluate_voc(detections, ground_truths, 2)
        return evaluate_coco(detections, ground_truths)

    good = [[10, 10, 50, 60], [60, 60, 90, 90]]
    assert evaluate(good, [0.9, 0.5]) is not None
    with pytest.raises(ValueError, match=r"image 4: detection scores not finite .* in 1 of 2 rows"):
        evaluate(good, [np.nan, 0.5])
    with pytest.raises(ValueError, match="image 4: detection scores not finite"):
        evaluate(good, [0.9, np.inf])
    with pytest.raises(ValueError, match="image 4: detection boxes not finite .* the first row 1"):
        evaluate([[10, 10, 50, 60], [60, np.nan, 90, 90]], [0.9, 0.5])
    with pytest.raises(ValueError, match="image 9: ground-truth boxes not finite"):
        ImageGroundTruth(9, [[0, 0, np.inf, 5]], [1])


# ----------------------------------------------------------------------------------------------
# Empty evaluation splits


def test_the_evaluator_refuses_an_empty_split():
    evaluator = Evaluator(configs.ssd_tiny(num_classes=4), batch_size=2)
    with pytest.raises(ValueError, match="the evaluation split is empty"):
        evaluator.metrics([], [])
    with pytest.raises(ValueError, match="the evaluation split is empty"):
        evaluator.run(None, iter([]))  # no batch: detect never runs, the parameters are never read
    with pytest.raises(ValueError, match="the evaluation split is empty"):
        evaluator.curves([], [])


# ----------------------------------------------------------------------------------------------
# torchvision's 91 COCO class slots


def test_coco_category_ids_map_to_our_contiguous_classes():
    # Names from COCO's instances_val2017.json, category id -> name.
    official = {1: "person", 13: "stop sign", 27: "backpack", 44: "bottle", 67: "dining table", 72: "tv",
                84: "book", 90: "toothbrush", 2: "bicycle", 11: "fire hydrant"}
    ids = np.array(list(official))
    classes = coco_category_ids_to_classes(ids)
    assert [COCO_CLASS_NAMES[k - 1] for k in classes] == list(official.values())
    assert coco_category_ids_to_classes([90, 1, 13])[0] == 80  # toothbrush, the last class
    np.testing.assert_array_equal(coco_category_ids_to_classes([1, 13]), [1, 12])
    table = coco_category_ids_to_classes(np.arange(91))  # a 91-slot model's classes -> ours
    assert table.shape == (91,) and table[0] == 0
    np.testing.assert_array_equal(np.flatnonzero(table[1:] == 0) + 1, [12, 26, 29, 30, 45, 66, 68, 69, 71, 83])
    np.testing.assert_array_equal(table[table > 0], np.arange(1, 81))  # each class once, in order
    np.testing.assert_array_equal(np.asarray(COCO_CATEGORY_IDS)[table[list(COCO_CATEGORY_IDS)] - 1],
                                  COCO_CATEGORY_IDS)
    with pytest.raises(ValueError, match="from 1 to 90"):
        coco_category_ids_to_classes([91])


def test_a_91_slot_model_is_scored_on_the_80_coco_categories():
    config = configs.ssd_tiny(num_classes=91)
    evaluator = Evaluator(config, batch_size=2, class_names=COCO_CLASS_NAMES, coco_category_ids=COCO_CATEGORY_IDS,
                          class_map=coco_category_ids_to_classes(np.arange(91)))
    assert evaluator.num_classes == 81
    # Image 5 (200 x 100): a toothbrush (class 80) and a person (class 1). The model's slots are
    # category ids: 90 toothbrush, 1 person, and 12, a slot COCO never used, which is dropped.
    truths = [ImageGroundTruth(5, [[10, 10, 60, 90], [100, 20, 180, 80]], [80, 1], height=100, width=200)]
    raw = Detections(boxes=np.array([[[0.05, 0.1, 0.3, 0.9], [0.5, 0.2, 0.9, 0.8], [0.0, 0.0, 1.0, 1.0]]]),
                     scores=np.array([[0.9, 0.8, 0.95]]), classes=np.array([[90, 1, 12]]),
                     num_detections=np.array([3]))
    (dets,) = detection_records(raw, [5], [(100, 200)], evaluator.class_map)
    np.testing.assert_array_equal(dets.classes, [80, 1])
    np.testing.assert_allclose(dets.boxes, [[10, 10, 60, 90], [100, 20, 180, 80]])
    metrics = evaluator.metrics([dets], truths)
    assert metrics["AP07/toothbrush"] == metrics["AP07/person"] == metrics["voc07_mAP"] == pytest.approx(1.0)
    assert metrics["coco/AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one entry for each of the model's 91 classes"):
        Evaluator(config, batch_size=2, class_map=np.arange(81))
    with pytest.raises(ValueError, match="need 80 class names"):
        Evaluator(config, batch_size=2, class_names=["a"], class_map=coco_category_ids_to_classes(np.arange(91)))


# ----------------------------------------------------------------------------------------------
# experiments/evaluate.py: failures that explain themselves

EVALUATE = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "evaluate.py")

# Runs evaluate.py with the TFDS source patched (argv[1]: "empty", "shapes_as_coco" or "none").
PATCHED_RUN = """
import runpy, sys
from ssd_jax.data import tfds_sources
mode, script = sys.argv[1], sys.argv[2]
original = tfds_sources.tfds_source
if mode == "empty":
    tfds_sources.tfds_source = lambda dataset, split, **kw: original(dataset, split, **kw).take(0)
elif mode == "shapes_as_coco":  # shapes labels 1..5 are valid COCO classes 1..5
    tfds_sources.tfds_source = lambda dataset, split, **kw: original("shapes_tiny", split, **kw)
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def run_evaluate(*args, patch="none"):
    return subprocess.run([sys.executable, "-c", PATCHED_RUN, patch, EVALUATE, *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    config = configs.ssd_tiny(num_classes=6)  # shapes: 5 classes + background
    return checkpoint.save_params(tmp_path_factory.mktemp("ckpt") / "shapes", ssd_jax.init(jax.random.key(0), config),
                                  config)


def assert_clean_failure(out, message):
    assert out.returncode != 0, out.stdout[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "error: " in out.stderr and message in out.stderr, out.stderr[-3000:]
    assert "evaluating" not in out.stderr and "**mAP**" not in out.stdout  # stopped before the evaluation


def broken_copy(source, target, damage):
    import shutil

    shutil.copytree(source, target)
    damage(target)
    return str(target)


def test_evaluate_explains_checkpoints_that_do_not_load(tmp_path, shapes_checkpoint, data_dir):
    def other_config(path):
        payload = json.loads((path / "config.json").read_text())
        payload["config"]["num_classes"] = 21  # the parameters are for 6
        (path / "config.json").write_text(json.dumps(payload))

    def corrupt_parameters(path):
        for root, _, files in os.walk(path / "params"):
            for name in files:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"not an orbax file")

    def no_model_config(path):
        (path / "config.json").write_text(json.dumps({"config": None}))

    cases = [(other_config, "cannot load the checkpoint"), (corrupt_parameters, "cannot load the checkpoint"),
             (no_model_config, "cannot load the checkpoint"),
             (lambda path: os.remove(path / "config.json"), "not a complete ssd_jax parameter checkpoint")]
    for i, (damage, message) in enumerate(cases):
        broken = broken_copy(shapes_checkpoint, tmp_path / f"broken{i}", damage)
        out = run_evaluate(f"--checkpoint={broken}", "--dataset=shapes_tiny", f"--data_dir={data_dir}")
        assert_clean_failure(out, message)
        assert broken in out.stderr
        assert not os.path.exists(os.path.join(broken, "eval"))  # nothing written for a checkpoint that fails


def test_evaluate_checks_the_output_directory_before_evaluating(tmp_path, shapes_checkpoint, data_dir):
    # Running as root, permissions do not stop a write; a path below a file stops everyone.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = run_evaluate(f"--checkpoint={shapes_checkpoint}", "--dataset=shapes_tiny", f"--data_dir={data_dir}",
                       f"--out_dir={blocker / 'eval'}")
    assert_clean_failure(out, f"cannot write the results to {blocker / 'eval'}")
    assert "pass a writable --out_dir" in out.stderr
    # The default, CHECKPOINT/eval, taken by a file: the same early error.
    checkpoint_copy = broken_copy(shapes_checkpoint, tmp_path / "ckpt", lambda path: (path / "eval").write_text(""))
    out = run_evaluate(f"--checkpoint={checkpoint_copy}", "--dataset=shapes_tiny", f"--data_dir={data_dir}")
    assert_clean_failure(out, f"cannot write the results to {os.path.join(checkpoint_copy, 'eval')}")


def test_evaluate_fails_on_an_empty_evaluation_split(tmp_path, shapes_checkpoint, data_dir):
    out = run_evaluate(f"--checkpoint={shapes_checkpoint}", "--dataset=shapes_tiny", f"--data_dir={data_dir}",
                       f"--out_dir={tmp_path / 'eval'}", patch="empty")
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "error: the evaluation split of shapes_tiny is empty" in out.stderr
    assert "shapes/tiny split 'test'" in out.stderr and data_dir in out.stderr  # where the split came from
    assert "(0 images" not in out.stdout and not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_scores_a_91_slot_model_on_coco(tmp_path, data_dir):
    config = configs.ssd_tiny(num_classes=91)
    ckpt = checkpoint.save_params(tmp_path / "torchvision_like", ssd_jax.init(jax.random.key(0), config), config)
    out = run_evaluate(f"--checkpoint={ckpt}", "--dataset=coco", f"--data_dir={data_dir}", "--batch_size=4",
                       f"--out_dir={tmp_path / 'eval'}", patch="shapes_as_coco")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "91 class slots" in out.stdout and "| toothbrush |" in out.stdout and "| **mAP** |" in out.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len([key for key in metrics if key.startswith("AP07/")]) == 80 and "AP07/toothbrush" in metrics
    assert 0 <= metrics["voc07_mAP"] <= 1 and -1 <= metrics["coco/AP"] <= 1
