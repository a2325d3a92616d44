"""ssd_jax.evaluation.Evaluator: fixed-size padded batches, original-image coordinates, metric keys."""

import dataclasses

import numpy as np
import pytest
from PIL import Image
from random_models import spread_params

import ssd_jax
from ssd_jax import configs
from ssd_jax.detect import DetectOptions, _detect
from ssd_jax.evaluation import Evaluator, plot_class_ap, plot_precision_recall

# With random weights and no L2Norm on conv4_3, ssd_tiny's box offsets are large, and boxes
# clipped to the image edge have zero area: they match nothing, not even themselves. L2Norm keeps
# the random model's boxes inside the image, which the self-consistency test below needs.
CONFIG = dataclasses.replace(configs.ssd_tiny(num_classes=4), backbone=dataclasses.replace(
    configs.ssd_tiny().backbone, l2norm_scale=20.0))
# Options no other test uses, so that this file's compilations are its own.
OPTIONS = dict(score_threshold=0.02, pre_nms_top_k=50, max_detections=20)
DETECT = DetectOptions(**OPTIONS)
NUM_IMAGES, MAX_OBJECTS = 7, 5


@pytest.fixture(scope="module")
def params():
    return spread_params(CONFIG)


@pytest.fixture(scope="module")
def data():
    """One evaluation split of 7 images as a single batch dict (the format of ssd_jax.data.pipeline)."""
    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 1, (NUM_IMAGES, MAX_OBJECTS, 2, 2)), axis=2)
    counts = np.array([0, 1, 5, 3, 2, 4, 1])  # objects per image, one image without any
    mask = np.arange(MAX_OBJECTS)[None, :] < counts[:, None]
    return {
        "image": rng.integers(0, 256, (NUM_IMAGES, 160, 160, 3), dtype=np.uint8),
        "boxes": np.where(mask[..., None], corners.reshape(NUM_IMAGES, MAX_OBJECTS, 4), 0).astype(np.float32),
        "labels": np.where(mask, rng.integers(1, 4, (NUM_IMAGES, MAX_OBJECTS)), 0).astype(np.int32),
        "mask": mask,
        "difficult": mask & (rng.random((NUM_IMAGES, MAX_OBJECTS)) < 0.2),
        "image_id": np.arange(100, 100 + NUM_IMAGES, dtype=np.int64),
        "original_size": np.array([[375, 500], [500, 333], [160, 160], [480, 640], [427, 640], [100, 90],
                                   [333, 500]], np.int32),
    }


def split(data, batch_size):
    """The split as consecutive batches of ``batch_size``, the last one smaller (a generator)."""
    for start in range(0, NUM_IMAGES, batch_size):
        yield {key: value[start:start + batch_size] for key, value in data.items()}


@pytest.fixture(scope="module")
def collected(params, data):
    """batch_size -> (detections, ground truths, compilations during collect)."""
    results = {}
    for batch_size in (2, 3, 7):
        before = _detect._cache_size()
        records = Evaluator(CONFIG, batch_size=batch_size, options=DETECT).collect(params, split(data, batch_size))
        results[batch_size] = (*records, _detect._cache_size() - before)
    return results


def test_one_compilation_per_batch_size(collected):
    # batch_size 2: batches of 2, 2, 2, 1; 3: 3, 3, 1; the short last batch is padded, not recompiled.
    assert {batch_size: compiled for batch_size, (_, _, compiled) in collected.items()} == {2: 1, 3: 1, 7: 1}


def test_detections_do_not_depend_on_the_batch_size(collected):
    reference, _, _ = collected[7]
    assert [d.image_id for d in reference] == list(range(100, 107))  # padding rows are dropped
    assert sum(len(d.scores) for d in reference) > 20  # there is something to compare
    for batch_size in (2, 3):
        detections, _, _ = collected[batch_size]
        assert [d.image_id for d in detections] == [d.image_id for d in reference]
        for ours, theirs in zip(detections, reference):
            # Bit-identical on CPU; the tolerance leaves room for batch-size-dependent kernels elsewhere.
            np.testing.assert_array_equal(ours.classes, theirs.classes)
            np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-6)
            np.testing.assert_allclose(ours.boxes, theirs.boxes, rtol=1e-6, atol=1e-4)


def test_detections_are_in_original_image_pixels(params, data, collected):
    detections, _, _ = collected[7]
    direct = ssd_jax.detect(params, data["image"], config=CONFIG, **OPTIONS)
    for i, record in enumerate(detections):
        height, width = data["original_size"][i]
        count = int(direct.num_detections[i])
        expected = np.asarray(direct.boxes[i, :count]) * [width, height, width, height]
        np.testing.assert_allclose(record.boxes, expected, rtol=1e-6)
        np.testing.assert_array_equal(record.classes, direct.classes[i, :count])
        assert np.all(record.boxes[:, 2] <= width + 1e-3) and np.all(record.boxes[:, 3] <= height + 1e-3)


def test_ground_truth_is_in_original_image_pixels(data, collected):
    _, ground_truths, _ = collected[2]
    assert [len(t.labels) for t in ground_truths] == [0, 1, 5, 3, 2, 4, 1]
    for i, truth in enumerate(ground_truths):
        height, width = data["original_size"][i]
        mask = data["mask"][i]
        assert (truth.image_id, truth.height, truth.width) == (100 + i, height, width)
        np.testing.assert_allclose(truth.boxes, data["boxes"][i][mask] * [width, height, width, height], rtol=1e-6)
        np.testing.assert_array_equal(truth.labels, data["labels"][i][mask])
        np.testing.assert_array_equal(truth.difficult, data["difficult"][i][mask])


def test_run_returns_the_metrics(params, data):
    evaluator = Evaluator(CONFIG, batch_size=3, class_names=["cat", "dog", "bird"], coco_category_ids=[17, 18, 16],
                          options=DETECT)
    metrics = evaluator.run(params, list(split(data, 3)), progress=True)
    names = ["cat", "dog", "bird"]
    coco = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert set(metrics) == {"voc07_mAP", "voc_mAP", *(f"AP/{n}" for n in names), *(f"AP07/{n}" for n in names),
                            *(f"coco/{n}" for n in coco)}
    values = np.array(list(metrics.values()))
    assert np.all(np.isnan(values) | (values == -1) | ((values >= 0) & (values <= 1)))
    assert 0 <= metrics["voc07_mAP"] <= 1 and 0 <= metrics["coco/AP"] <= 1


def test_detections_used_as_ground_truth_score_one(params, data):
    # Ground truth = the model's own detections: every detection finds itself (IoU 1; NMS keeps
    # same-class detections apart), so all APs are 1 if boxes and objects are scaled alike.
    direct = ssd_jax.detect(params, data["image"], config=CONFIG, **OPTIONS)
    count = np.asarray(direct.num_detections)
    mask = np.arange(OPTIONS["max_detections"])[None, :] < count[:, None]
    own = dict(data, boxes=np.asarray(direct.boxes), labels=np.asarray(direct.classes), mask=mask,
               difficult=np.zeros_like(mask))
    metrics = Evaluator(CONFIG, batch_size=3, options=DETECT).run(params, split(own, 3))  # compiled already
    assert metrics["voc07_mAP"] == pytest.approx(1.0) and metrics["voc_mAP"] == pytest.approx(1.0)
    assert metrics["coco/AP"] == pytest.approx(1.0) and metrics["coco/AR100"] == pytest.approx(1.0)


def test_bad_arguments_raise(params, data):
    with pytest.raises(ValueError, match="3 class names"):
        Evaluator(CONFIG, batch_size=2, class_names=["cat"])
    with pytest.raises(ValueError, match="larger than the evaluator's batch_size 2"):
        Evaluator(CONFIG, batch_size=2, options=DETECT).collect(params, split(data, 3))


def test_plots_are_written(tmp_path, collected):
    per_class_ap = {"cat": 0.8, "dog": 0.45, "bird": float("nan")}
    path = plot_class_ap(per_class_ap, tmp_path / "ap.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 500 and image.size[1] >= 150
    curves = {"cat": (np.array([0.25, 0.5, 0.5, 0.75]), np.array([1.0, 1.0, 2 / 3, 0.75])),
              "dog": (np.array([0.5, 0.5]), np.array([1.0, 0.5])), "bird": (np.zeros(0), np.zeros(0))}
    path = plot_precision_recall(curves, tmp_path / "plots" / "pr.png", columns=2, per_class_ap=per_class_ap)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 400
    # The evaluator's curves plot as they are.
    curves = Evaluator(CONFIG, batch_size=7, options=DETECT).curves(*collected[7][:2])
    path = plot_precision_recall(curves, tmp_path / "evaluator_pr.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 600
