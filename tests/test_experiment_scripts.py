"""experiments/evaluate.py and show_batch.py end to end, in subprocesses as a user runs them."""

import json
import os
import subprocess
import sys

import jax
import pytest
from PIL import Image

import ssd_jax
from ssd_jax import checkpoint, configs

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments")


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(EXPERIMENTS, script), *args], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_evaluate_prints_a_table_and_writes_pictures(tmp_path, data_dir):
    config = configs.ssd_tiny(num_classes=6)  # the shapes data set: 5 classes + background
    ckpt = checkpoint.save_params(tmp_path / "ckpt", ssd_jax.init(jax.random.key(0), config), config)
    out = run("evaluate.py", f"--checkpoint={ckpt}", "--dataset=shapes_tiny", f"--data_dir={data_dir}",
              "--batch_size=3", f"--out_dir={tmp_path / 'eval'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| hexagon |" in out.stdout and "**mAP**" in out.stdout and "COCO-style: AP" in out.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["voc07_mAP"] <= 1 and "coco/AP50" in metrics
    for name in ("class_ap.png", "precision_recall.png"):
        with Image.open(tmp_path / "eval" / name) as picture:
            assert picture.width > 200 and picture.height > 200


def test_evaluate_explains_a_missing_checkpoint_and_a_class_mismatch(tmp_path, data_dir):
    out = run("evaluate.py", f"--checkpoint={tmp_path / 'none'}", "--dataset=shapes_tiny")
    assert out.returncode != 0 and "not a complete ssd_jax parameter checkpoint" in out.stderr
    assert "convert_weights.py" in out.stderr
    config = configs.ssd_tiny(num_classes=21)
    ckpt = checkpoint.save_params(tmp_path / "voc", ssd_jax.init(jax.random.key(0), config), config)
    out = run("evaluate.py", f"--checkpoint={ckpt}", "--dataset=shapes_tiny", f"--data_dir={data_dir}")
    assert out.returncode != 0 and "21 classes but shapes_tiny has 6" in out.stderr


def test_show_batch_draws_an_augmented_batch(tmp_path, data_dir):
    path = tmp_path / "batch.png"
    out = run("show_batch.py", "--dataset=shapes_tiny", f"--data_dir={data_dir}", "--batch=8", f"--out={path}")
    assert out.returncode == 0, out.stderr[-2000:]
    with Image.open(path) as picture:
        assert picture.size == (4 * 160 + 3 * 4, 2 * 160 + 4)
