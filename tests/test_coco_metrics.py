"""COCO metrics (ssd_jax.evaluation.coco) against pycocotools run directly on hand-written COCO data."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd_jax.evaluation import (
    COCO_CATEGORY_IDS,
    COCO_CLASS_NAMES,
    ImageDetections,
    ImageGroundTruth,
    coco_ground_truth,
    evaluate_coco,
)

IMAGE_SIZES = {11: (480, 640), 25: (300, 200), 3: (375, 500)}  # image id -> (height, width)
CATEGORY_IDS = [7, 3, 90]  # our class k is COCO category CATEGORY_IDS[k - 1]
NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def random_scene(seed):
    """Pixel (x, y, w, h) objects and detections near them, per image; classes 1..3."""
    rng = np.random.default_rng(seed)
    scene = {}
    for image_id, (height, width) in IMAGE_SIZES.items():
        m = rng.integers(2, 7)
        wh = rng.uniform(0.03, 0.6, (m, 2)) * [width, height]  # small, medium and large objects
        xy = rng.uniform(0, 1, (m, 2)) * ([width, height] - wh)
        objects = np.concatenate([xy, wh], axis=1)
        labels = rng.integers(1, 4, m)
        # Detections: jittered copies of the objects (some with the wrong class) and random boxes.
        n = rng.integers(3, 12)
        pick = rng.integers(0, m, n)
        det_boxes = objects[pick] * rng.uniform(0.85, 1.15, (n, 4))
        det_boxes[: n // 3, 2:] = rng.uniform(0.05, 0.4, (n // 3, 2)) * [width, height]
        det_labels = np.where(rng.random(n) < 0.8, labels[pick], rng.integers(1, 4, n))
        scene[image_id] = dict(objects=objects, labels=labels, det_boxes=det_boxes, det_labels=det_labels,
                               scores=rng.uniform(0.05, 1.0, n))
    return scene


def pycocotools_directly(scene):
    """The scene written by hand in COCO's formats, evaluated by pycocotools -> stats [12]."""
    images = [{"id": i, "height": h, "width": w} for i, (h, w) in IMAGE_SIZES.items()]
    annotations, results = [], []
    for image_id, s in scene.items():
        for box, label in zip(s["objects"], s["labels"]):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": list(box),
                                "category_id": CATEGORY_IDS[label - 1], "area": box[2] * box[3], "iscrowd": 0})
        for box, label, score in zip(s["det_boxes"], s["det_labels"], s["scores"]):
            results.append({"image_id": image_id, "category_id": CATEGORY_IDS[label - 1], "bbox": list(box),
                            "score": score})
    return pycocotools_stats(images, annotations, results, CATEGORY_IDS)


def pycocotools_stats(images, annotations, results, category_ids):
    """pycocotools on hand-written COCO dicts -> stats [12]."""
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c, "name": str(c)} for c in category_ids]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def normalised_corners(xywh, height, width):
    x, y, w, h = xywh.T
    return np.stack([x / width, y / height, (x + w) / width, (y + h) / height], axis=1)


def our_records(scene):
    detections, ground_truths = [], []
    for image_id, s in scene.items():
        height, width = IMAGE_SIZES[image_id]
        ground_truths.append(ImageGroundTruth(image_id=image_id, boxes=normalised_corners(s["objects"], height, width),
                                              labels=s["labels"], height=height, width=width))
        detections.append(ImageDetections(image_id=image_id, boxes=normalised_corners(s["det_boxes"], height, width),
                                          scores=s["scores"], classes=s["det_labels"]))
    return detections, ground_truths


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_pycocotools_on_hand_written_coco_data(seed):
    scene = random_scene(seed)
    expected = pycocotools_directly(scene)
    assert 0.05 < expected[0] < 0.95  # a scene with hits and misses: the comparison means something
    ours = evaluate_coco(*our_records(scene), category_ids=CATEGORY_IDS, normalized=True)
    assert list(ours) == list(NAMES)
    np.testing.assert_allclose([ours[name] for name in NAMES], expected, atol=1e-9)


def test_pixel_boxes_give_the_same_metrics():
    detections, ground_truths = our_records(random_scene(0))
    scale = {t.image_id: np.array([t.width, t.height] * 2) for t in ground_truths}
    pixel_dets = [ImageDetections(d.image_id, d.boxes * scale[d.image_id], d.scores, d.classes) for d in detections]
    pixel_truth = [ImageGroundTruth(t.image_id, t.boxes * scale[t.image_id], t.labels, height=t.height,
                                    width=t.width) for t in ground_truths]
    normalised = evaluate_coco(detections, ground_truths, category_ids=CATEGORY_IDS, normalized=True)
    pixels = evaluate_coco(pixel_dets, pixel_truth, category_ids=CATEGORY_IDS)
    assert pixels == pytest.approx(normalised, abs=1e-9)
    # The identity mapping is the default; with the same ids on both sides the metrics are the same.
    assert evaluate_coco(pixel_dets, pixel_truth) == pytest.approx(pixels, abs=1e-9)


def test_perfect_and_empty_detections():
    _, ground_truths = our_records(random_scene(0))
    perfect = [ImageDetections(t.image_id, t.boxes, np.ones(len(t.labels)), t.labels) for t in ground_truths]
    stats = evaluate_coco(perfect, ground_truths, normalized=True)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    empty = evaluate_coco([], ground_truths, normalized=True)  # loadRes would fail on []
    assert empty["AP"] == 0.0 and empty["AR100"] == 0.0
    # No large objects in a tiny-box scene: COCO reports -1 for that bucket.
    tiny = [ImageGroundTruth(1, [[10, 10, 20, 20]], [1], height=100, width=100)]
    assert evaluate_coco([], tiny)["APl"] == -1.0 and evaluate_coco([], tiny)["APs"] == 0.0


def test_difficult_objects_become_crowd_regions():
    truth = [ImageGroundTruth(1, [[0, 0, 50, 50], [60, 60, 90, 90]], [1, 1], difficult=[False, True],
                              height=100, width=100)]
    coco = coco_ground_truth(truth)
    assert [a["iscrowd"] for a in coco.dataset["annotations"]] == [0, 1]
    # Finding the difficult object neither helps nor hurts.
    found = [ImageDetections(1, [[0, 0, 50, 50], [60, 60, 90, 90]], [0.5, 0.9], [1, 1])]
    assert evaluate_coco(found, truth)["AP"] == pytest.approx(1.0)
    assert evaluate_coco(found, truth, difficult_as_crowd=False)["AR100"] == pytest.approx(1.0)


def test_coco_constants():
    assert len(COCO_CATEGORY_IDS) == len(COCO_CLASS_NAMES) == 80 == len(set(COCO_CATEGORY_IDS))
    assert set(range(1, 91)) - set(COCO_CATEGORY_IDS) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS)
    named = dict(zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES))
    assert (named[1], named[13], named[27], named[44], named[67], named[72], named[84], named[90]) == (
        "person", "stop sign", "backpack", "bottle", "dining table", "tv", "book", "toothbrush")
