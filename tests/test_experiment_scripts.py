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


def test_detect_images_draws_each_image_and_skips_a_corrupt_one(tmp_path):
    import numpy as np

    from ssd_jax.data.shapes import generate_example

    config = configs.ssd_tiny(num_classes=6)
    ckpt = checkpoint.save_params(tmp_path / "ckpt", ssd_jax.init(jax.random.key(0), config), config)
    rng = np.random.default_rng(0)
    paths = []
    for name in ("first.png", "second.jpg"):
        image, _, _ = generate_example(rng)
        Image.fromarray(image).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    paths.insert(1, str(tmp_path / "broken.jpg"))
    out_dir = tmp_path / "out"
    out = run("detect_images.py", f"--checkpoint={ckpt}", f"--out_dir={out_dir}", "--min_score=0", *paths)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped" in out.stderr and "broken.jpg" in out.stderr
    for source, drawn in (("first.png", "first.png"), ("second.jpg", "second.png")):
        with Image.open(tmp_path / source) as original, Image.open(out_dir / drawn) as picture:
            assert picture.size == original.size  # drawn on the image at its own size
    assert not (out_dir / "broken.png").exists()
    results = json.loads((out_dir / "detections.json").read_text())
    assert results and {r["image_id"] for r in results} <= {0, 2}
    first = next(r for r in results if r["image_id"] == 0)
    assert set(first) == {"image_id", "file_name", "path", "picture", "category_id", "category_name", "bbox", "score"}
    assert first["path"] == paths[0] and first["picture"] == "first.png" and 1 <= first["category_id"] <= 5
    assert len(first["bbox"]) == 4 and first["bbox"][2] >= 0 and first["bbox"][3] >= 0


def test_detect_images_needs_a_model(tmp_path):
    out = run("detect_images.py", str(tmp_path / "x.jpg"))
    assert out.returncode != 0 and "exactly one of --checkpoint" in out.stderr
    out = run("detect_images.py", f"--checkpoint={tmp_path / 'none'}", str(tmp_path / "x.jpg"))
    assert out.returncode != 0 and "not a complete ssd_jax parameter checkpoint" in out.stderr
