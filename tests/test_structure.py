"""One training entry point and its aliases, data sets described in one place, one evaluation
path that never drops ground truth, training settings in the training config."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ssd_jax import checkpoint, configs, train
from ssd_jax.data import pipeline, sources, tfds_sources
from ssd_jax.evaluation import datasets as evaluation
from ssd_jax.evaluation.evaluator import ground_truth_records

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments")


def script(name, *args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(EXPERIMENTS, name), *args], capture_output=True, text=True,
                          timeout=timeout)


def shown_config(name, *args) -> dict:
    out = script(name, "--show_config", *args, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    fields = {}
    for line in out.stdout.splitlines():
        if ": " in line and not line.startswith(" "):
            key, value = line.split(": ", 1)
            fields[key] = value
    return fields


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


# ----------------------------------------------------------------------------- the entry points
def test_dataset_shortcut_picks_the_recipe_and_overrides_apply_on_top():
    assert shown_config("train.py")["model"] == "ssd300"  # the paper's VOC recipe by default
    shapes = shown_config("train.py", "--dataset=shapes", "--config.num_steps=7")
    assert (shapes["model"], shapes["dataset"], shapes["num_steps"]) == ("ssd_tiny", "shapes", "7")
    assert shapes["match_iou_threshold"] == "0.4"  # the recipe's, a training setting now
    tiny = shown_config("train_voc.py", "--dataset=shapes_tiny")  # the 16-image set with the shapes recipe
    assert (tiny["model"], tiny["dataset"]) == ("ssd_tiny", "shapes_tiny")
    explicit = shown_config("train.py", f"--config={os.path.join(EXPERIMENTS, 'configs', 'coco_ssd300.py')}",
                            "--dataset=voc")  # an explicit --config keeps its model, --dataset sets the data
    assert (explicit["model"], explicit["dataset"]) == ("ssd300_coco", "voc")
    assert shown_config("train_coco.py")["model"] == "ssd300_coco"
    override = shown_config("train_voc.py", "--dataset=shapes", "--config.dataset=shapes_tiny")
    assert override["dataset"] == "shapes_tiny"  # the user's own override wins
    own = shown_config("train_voc.py", "--dataset=vocdir", "--data_dir=/my/voc")  # the paper's recipe, own data
    assert (own["model"], own["dataset"], own["data_dir"]) == ("ssd300", "vocdir", "/my/voc")


def test_the_training_script_trains_and_stores_the_class_names(tmp_path, data_dir):
    # train_voc.py and train_coco.py run this same code with another default config (their
    # --show_config is checked above); with evaluation: test_train.test_train_voc_script_on_shapes_with_evaluation.
    workdir = tmp_path / "run"
    out = script("train.py", "--dataset=shapes_tiny", f"--workdir={workdir}", f"--config.data_dir={data_dir}",
                 "--config.model=ssd_tiny", "--config.batch_size=4", "--config.num_steps=2",
                 "--config.checkpoint_every=2", "--config.eval_every=0", "--config.eval_batch_size=4",
                 "--config.shuffle_buffer=8")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "done:" in out.stdout
    metadata = checkpoint.load_metadata(workdir / "params")
    assert metadata["class_names"] == list(tfds_sources.DATASETS["shapes_tiny"].class_names)
    assert not (workdir / "detections.png").exists() and not (workdir / "class_ap.png").exists()
    assert "detections.png" not in out.stdout.splitlines()[-1]  # lists only what exists


# ----------------------------------------------------------------------------- data sets and evaluation
def test_every_data_set_is_described_completely():
    for name, spec in tfds_sources.DATASETS.items():
        assert spec.num_classes == len(spec.class_names) + 1
        assert spec.voc_iou in ("devkit", "continuous"), name
        assert spec.train and spec.eval, name
    coco, voc = tfds_sources.DATASETS["coco"], tfds_sources.DATASETS["voc"]
    assert coco.category_ids is not None and not coco.train_on_difficult
    assert voc.train_on_difficult and voc.voc_iou == "devkit"
    with pytest.raises(ValueError, match="unknown dataset 'vco'"):
        tfds_sources.dataset_spec("vco")


def test_coco_crowd_regions_are_not_trained_on():
    with tfds.testing.mock_data(num_examples=12):
        trained = list(tfds_sources.tfds_source("coco", "train").as_numpy_iterator())
        evaluated = list(tfds_sources.tfds_source("coco", "eval").as_numpy_iterator())
    assert sum(int(e["difficult"].sum()) for e in evaluated) > 0  # the mock data has crowd regions ...
    assert sum(int(e["difficult"].sum()) for e in trained) == 0  # ... training never sees them
    assert sum(len(e["labels"]) for e in trained) > 0


def test_evaluation_never_drops_ground_truth():
    rng = np.random.default_rng(0)
    counts = [3, 130, 7]  # more objects than the training configs' max_boxes (100)

    def examples():
        for i, count in enumerate(counts):
            lo = rng.uniform(0, 0.8, (count, 2))
            yield {"image": rng.integers(0, 255, (40, 50, 3), dtype=np.uint8),
                   "boxes": np.concatenate([lo, lo + 0.1], -1).astype(np.float32),
                   "labels": rng.integers(1, 4, count).astype(np.int32), "difficult": np.zeros(count, bool),
                   "image_id": np.int64(i)}

    signature = {"image": tf.TensorSpec([None, None, 3], tf.uint8), "boxes": tf.TensorSpec([None, 4], tf.float32),
                 "labels": tf.TensorSpec([None], tf.int32), "difficult": tf.TensorSpec([None], tf.bool),
                 "image_id": tf.TensorSpec([], tf.int64)}
    source = tf.data.Dataset.from_generator(examples, output_signature=signature)
    batches = list(pipeline.as_numpy(pipeline.eval_dataset(source, batch_size=2, image_size=32)))
    assert [int(m.sum()) for batch in batches for m in batch["mask"]] == counts
    truths = [truth for batch in batches for truth in ground_truth_records(batch)]
    assert [len(truth.labels) for truth in truths] == counts  # what the metrics count


def test_a_91_slot_model_maps_onto_the_data_set_categories():
    coco, shapes = sources.open_source("coco"), sources.open_source("shapes")
    table = evaluation.class_map_for(configs.ssd_tiny(num_classes=91), coco)
    assert table.shape == (91,) and table[90] == 80 and table[13] == 12 and table[12] == 0 and table[0] == 0
    assert evaluation.class_map_for(configs.ssd_tiny(num_classes=81), coco) is None
    with pytest.raises(evaluation.EvaluationError, match="has 7 classes but shapes has 6"):
        evaluation.class_map_for(configs.ssd_tiny(num_classes=7), shapes)


# ----------------------------------------------------------------------------- model vs training settings
CONFIG_V1 = os.path.join(os.path.dirname(__file__), "data", "config_v1")


def test_matching_and_mining_are_training_settings():
    config = train.default_config()
    assert (config.match_iou_threshold, config.neg_pos_ratio) == (0.5, 3.0)  # the paper's
    assert not hasattr(configs.ssd300(), "match_iou_threshold")
    config.match_iou_threshold = 0.0
    with pytest.raises(train.ConfigError, match="match_iou_threshold=0.0: must be a number in"):
        train.validate_config(config)


@pytest.mark.parametrize("name", ["ssd300", "ssd300_coco", "ssd300_torchvision", "ssd512", "ssd_tiny",
                                  "ssdlite320_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large_full",
                                  "ssd300_resnet50"])
def test_config_json_of_version_1_loads_as_the_same_preset(name):
    """config.json files as every release before the base networks' own settings wrote them (kept in
    tests/data/config_v1, written by that code): flat VGG widths, a backbone name, the matching
    settings, a 4-tuple of post-processing options."""
    with open(os.path.join(CONFIG_V1, f"{name}.json")) as f:
        stored = json.load(f)
    assert "config_version" not in stored and isinstance(stored["backbone"], str)
    expected = configs.get(name)
    if name == "ssd300_resnet50":  # written before the preset took NVIDIA's clamped boxes and decode
        expected = dataclasses.replace(expected, prior_clip="wh", clip_boxes=True, postprocess=None)
    assert configs.from_dict(stored) == expected  # a file keeps what it was written with
    config = configs.get(name)  # and every preset round-trips through today's JSON
    assert configs.from_dict(json.loads(json.dumps(configs.to_dict(config)))) == config


def test_the_oldest_config_json_and_a_caffe_one_still_load(tmp_path):
    with open(os.path.join(CONFIG_V1, "ssd300_torchvision_before_backbones.json")) as f:
        oldest = json.load(f)  # before backbone, head, std_rgb, the Caffe fields and postprocess existed
    assert "backbone" not in oldest and "match_iou_threshold" in oldest
    assert configs.from_dict(oldest) == configs.ssd300_torchvision()
    # A Caffe network's graph was flat in the config (caffe_layers, ...): now its base network's settings.
    from caffe_files import random_ssd300_weights, ssd300_prototxt, write_caffemodel

    from ssd_jax import weights

    text, convs = ssd300_prototxt(num_classes=3, width=8)
    (tmp_path / "deploy.prototxt").write_text(text)
    write_caffemodel(tmp_path / "m.caffemodel", random_ssd300_weights(convs))
    _, expected = weights.from_caffe(tmp_path / "deploy.prototxt", tmp_path / "m.caffemodel")
    with open(os.path.join(CONFIG_V1, "caffe_weiliu89_eighth.json")) as f:
        stored = json.load(f)
    assert stored["backbone"] == "caffe" and stored["caffe_layers"]
    assert configs.from_dict(stored) == expected
    assert configs.from_dict(json.loads(json.dumps(configs.to_dict(expected)))) == expected
