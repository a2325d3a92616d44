"""Inputs as users have them: detect inside jax.jit, lists of images of any sizes, NaN pixels, image
files (EXIF, 16 bits), bad weight files, and the scripts' command lines (detect_images.py,
convert_weights.py, show_batch.py) run in subprocesses as a user runs them."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from random_models import spread_params

import ssd_jax
from ssd_jax import checkpoint, configs, image_io, weights
from ssd_jax.detect import _detect

CONFIG = configs.ssd_tiny(num_classes=4)
EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments")


@pytest.fixture(scope="module")
def params():
    return spread_params(CONFIG)


def image(height, width, seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).uniform(0, 255, (height, width, 3)).astype(dtype)


def assert_same_detections(ours, theirs, ours_index=0, theirs_index=0):
    ours = jax.tree.map(lambda x: np.asarray(x[ours_index]), ours)
    theirs = jax.tree.map(lambda x: np.asarray(x[theirs_index]), theirs)
    assert ours.num_detections == theirs.num_detections > 0
    np.testing.assert_array_equal(ours.classes, theirs.classes)
    np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-6)
    np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=1e-6)


# ----------------------------------------------------------------------------- detect
def test_detect_runs_inside_the_callers_jit(params):
    pixels = image(120, 200)[None]
    jitted = jax.jit(lambda p, x: ssd_jax.detect(p, x, config=CONFIG))(params, pixels)
    assert_same_detections(jitted, ssd_jax.detect(params, pixels, config=CONFIG))
    with pytest.raises(ValueError, match="3 channels"):  # shapes are still checked on tracers
        jax.jit(lambda p, x: ssd_jax.detect(p, x, config=CONFIG))(params, np.zeros((1, 8, 8, 4), np.float32))


def test_a_list_of_differently_sized_images_gives_each_images_detections(params):
    small, large = image(77, 50, seed=1), image(120, 200, seed=2)
    both = ssd_jax.detect(params, [small, large], config=CONFIG)
    assert both.boxes.shape == (2, 200, 4)
    assert_same_detections(both, ssd_jax.detect(params, small[None], config=CONFIG), 0)
    assert_same_detections(both, ssd_jax.detect(params, large[None], config=CONFIG), 1)

    # One program per list length, whatever the sizes: a tuple of two other sizes compiles nothing.
    before = _detect._cache_size()
    others = ssd_jax.detect(params, (image(64, 90, seed=3), Image.fromarray(image(33, 140, seed=4))), config=CONFIG)
    assert _detect._cache_size() == before and int(others.num_detections[1]) > 0


def test_a_list_of_equally_sized_images_equals_the_batch(params):
    first, second = image(120, 200, seed=5), image(120, 200, seed=6)
    listed = ssd_jax.detect(params, [first, second], config=CONFIG)
    batched = ssd_jax.detect(params, np.stack([first, second]), config=CONFIG)
    for b in range(2):
        assert_same_detections(listed, batched, b, b)


@pytest.mark.parametrize("bad, message", [
    ([], "non-empty"),
    ([image(8, 8), image(8, 8)[None]], r"images\[1\] must be one image \[H, W, 3\]"),
    ([image(8, 8)[..., :2]], r"images\[0\] must be RGB with 3 channels"),
    ([image(8, 8), image(8, 8).astype(np.int64)], r"images\[1\] must be uint8 or floating.*int64"),
    ([image(8, 8), np.zeros((0, 8, 3), np.uint8)], r"images\[1\] must be non-empty"),
])
def test_bad_lists_name_the_image(params, bad, message):
    with pytest.raises(ValueError, match=message):
        ssd_jax.detect(params, bad, config=CONFIG)


def test_nan_and_inf_host_pixels_are_refused_with_a_count(params):
    pixels = np.stack([image(40, 60, dtype=np.float32)] * 3)
    pixels[1, 0, 0, 0] = np.nan
    pixels[1, 5, 7, 2] = np.inf
    with pytest.raises(ValueError, match=r"images: 2 of 7200 pixels are NaN or infinite in image\(s\) \[1\]"):
        ssd_jax.detect(params, pixels, config=CONFIG)
    listed = [image(40, 60, dtype=np.float32), image(30, 20, dtype=np.float64)]
    listed[1][3, 4] = -np.inf
    with pytest.raises(ValueError, match=r"images\[1\]: 1 of 600 pixels are NaN or infinite"):
        ssd_jax.detect(params, listed, config=CONFIG)


def test_device_arrays_are_not_read_for_nan(params):
    # As documented: checking would copy the batch to the host; the caller checks device arrays.
    pixels = jnp.full((1, 40, 60, 3), jnp.nan, jnp.float32)
    assert ssd_jax.detect(params, pixels, config=CONFIG).scores.shape == (1, 200)


# ----------------------------------------------------------------------------- image files
def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def halves(height=20, width=40):
    """Left half red, right half blue: where they end up shows the rotation."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2:, 2] = 255
    return pixels


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1)])  # 6: rotate 90 clockwise to view, 8: counter
def test_exif_orientation_is_applied(tmp_path, orientation, turns):
    stored = halves()
    path = tmp_path / "photo.png"
    Image.fromarray(stored).save(path, exif=exif_with_orientation(orientation))
    upright = image_io.read_image(path)
    assert upright.shape == (40, 20, 3) and upright.dtype == np.uint8
    np.testing.assert_array_equal(upright, np.rot90(stored, turns))
    np.testing.assert_array_equal(image_io.read_image(path, exif_orientation=False), stored)


def test_exif_orientation_of_a_jpeg_and_data_set_readers_keep_stored_pixels(tmp_path):
    from ssd_jax.data import index

    path = tmp_path / "phone.jpg"
    Image.fromarray(halves()).save(path, exif=exif_with_orientation(6), quality=95)
    upright = image_io.read_image(path)
    assert upright.shape == (40, 20, 3)
    assert upright[:10, :, 0].mean() > 200 and upright[30:, :, 2].mean() > 200  # red on top, blue below
    assert index.read_image(path).shape == (20, 40, 3)  # annotations index the stored pixels


@pytest.mark.parametrize("suffix, dtype", [(".png", np.uint16), (".tif", np.int32)])  # modes 'I;16' and 'I'
def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path, suffix, dtype):
    gradient = np.tile(np.linspace(0, 65535, 256).round().astype(dtype), (8, 1))
    path = tmp_path / f"depth{suffix}"
    Image.fromarray(gradient).save(path)
    with Image.open(path) as opened:
        assert opened.mode in image_io.SIXTEEN_BIT_MODES
    pixels = image_io.read_image(path)
    assert pixels.shape == (8, 256, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], np.round(gradient / 257).astype(np.uint8))
    assert np.all(pixels[..., 0] == pixels[..., 2]) and np.all(np.diff(pixels[0, :, 0].astype(int)) >= 0)
    assert pixels[0, 0, 0] == 0 and pixels[0, 128, 0] == 128 and pixels[0, -1, 0] == 255


def test_image_io_does_not_import_tensorflow():
    code = "import sys, ssd_jax.image_io; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# ----------------------------------------------------------------------------- weight files
def run(script, *args, env=None):
    return subprocess.run([sys.executable, os.path.join(EXPERIMENTS, script), *args], capture_output=True,
                          text=True, timeout=600, env=env)


def test_a_truncated_npz_is_a_weight_file_error(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, a=np.ones((64, 64), np.float32))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(weights.WeightFileError, match=r"weights\.npz is not a readable NumPy \.npz weight file"):
        weights.load_state_dict(path)


def test_convert_weights_explains_a_truncated_or_text_pth(tmp_path):
    torch = pytest.importorskip("torch")
    complete = tmp_path / "complete.pth"
    torch.save({"conf.0.weight": torch.ones(16, 8, 3, 3)}, complete)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(complete.read_bytes()[: complete.stat().st_size // 2])
    text = tmp_path / "page.pth"
    text.write_text("<html><body>404 Not Found</body></html>\n")
    for path in (truncated, text):
        out = run("convert_weights.py", "--format=amdegroot", f"--input={path}", f"--output={tmp_path / 'ckpt'}")
        assert out.returncode != 0
        assert f"error: {path} is not a readable PyTorch weight file (" in out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "ckpt").exists()

    import argparse

    with_objects = tmp_path / "with_objects.pth"  # a training script's checkpoint: tensors and its arguments
    torch.save({"state_dict": {"conf.0.weight": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, with_objects)
    with pytest.raises(weights.WeightFileError, match=r"argparse\.Namespace.*pickles Python objects besides tensors"):
        weights.load_state_dict(with_objects)


# ----------------------------------------------------------------------------- show_batch.py, --help
def test_show_batch_explains_unprepared_voc_without_a_traceback(tmp_path):
    out = run("show_batch.py", "--dataset=voc", f"--data_dir={tmp_path}", f"--out={tmp_path / 'batch.png'}")
    assert out.returncode != 0
    assert "error: TFDS data set 'voc/2007' is not prepared" in out.stderr and "tfds build voc/2007" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "batch.png").exists()


@pytest.mark.parametrize("script, names", [
    ("detect_images.py", ["checkpoint", "weights", "format", "out_dir", "min_score", "batch_size", "class_names"]),
    ("convert_weights.py", ["format", "input", "output", "config", "bgr", "torchvision_normalization", "overwrite"]),
    ("show_batch.py", ["dataset", "data_dir", "image_size", "batch", "seed", "out"]),
])
def test_help_lists_the_scripts_own_flags(script, names):
    out = run(script, "--help")
    for name in names:
        assert re.search(rf"^  --(\[no\])?{name}:", out.stdout, re.MULTILINE), f"--{name} missing from {script} --help"


# ----------------------------------------------------------------------------- detect_images.py
@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    config = configs.ssd_tiny(num_classes=6)
    return str(checkpoint.save_params(tmp_path_factory.mktemp("ckpt") / "params",
                                      ssd_jax.init(jax.random.key(0), config), config))


def write_images(folder, specs):
    """{relative path: (height, width)} -> their paths, random pixels saved as PNG or JPEG."""
    paths = []
    for seed, (name, (height, width)) in enumerate(specs.items()):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(height, width, seed=seed)).save(path)
        paths.append(str(path))
    return paths


def test_detect_images_keeps_same_named_inputs_apart_and_compiles_once(tmp_path, shapes_checkpoint):
    paths = write_images(tmp_path, {"d1/x.png": (90, 120), "d2/x.png": (60, 50), "d2/y.jpg": (70, 71)})
    out_dir = tmp_path / "out"
    env = {**os.environ, "JAX_LOG_COMPILES": "1"}
    out = run("detect_images.py", f"--checkpoint={shapes_checkpoint}", f"--out_dir={out_dir}", "--min_score=0",
              "--batch_size=2", *paths, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("Compiling jit(_detect)") == 1  # 3 sizes, 2 batches (the last padded): one program
    assert sorted(os.listdir(out_dir)) == ["detections.json", "x.png", "x_1.png", "y.png"]
    for path, picture in zip(paths, ["x.png", "x_1.png", "y.png"]):
        with Image.open(path) as original, Image.open(out_dir / picture) as drawn:
            assert drawn.size == original.size
    results = json.loads((out_dir / "detections.json").read_text())
    by_image = {r["image_id"]: r for r in results}
    assert sorted(by_image) == [0, 1, 2]
    for image_id, (path, picture) in enumerate(zip(paths, ["x.png", "x_1.png", "y.png"])):
        entry = by_image[image_id]
        assert entry["path"] == path and entry["picture"] == picture
        assert entry["file_name"] == os.path.basename(path)
    # Pixel boxes use each image's own size: image 1 is 50 wide and 60 high.
    boxes = np.array([r["bbox"] for r in results if r["image_id"] == 1])
    assert boxes[:, 0].min() >= 0 and (boxes[:, 0] + boxes[:, 2]).max() <= 50.01
    assert (boxes[:, 1] + boxes[:, 3]).max() <= 60.01 and (boxes[:, 1] + boxes[:, 3]).max() > 30


DISK_FULL = """
import builtins, errno, os, runpy, sys

real_open = builtins.open
state = {"pictures": 0, "full": False}


class FullDisk:
    def __init__(self, file):
        self.file = file

    def write(self, data):
        self.file.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def open_on_a_disk_that_fills_up(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if "w" in mode and os.path.basename(str(file)).startswith("."):  # the script's temporary files
        state["pictures"] += ".png." in os.path.basename(str(file))
        state["full"] |= state["pictures"] >= 3
        if state["full"]:
            return FullDisk(f)
    return f


builtins.open = open_on_a_disk_that_fills_up
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def test_detect_images_on_a_disk_that_fills_up_keeps_what_finished(tmp_path, shapes_checkpoint):
    paths = write_images(tmp_path, {f"image{k}.png": (50 + 10 * k, 60) for k in range(4)})
    out_dir = tmp_path / "out"
    out = subprocess.run([sys.executable, "-c", DISK_FULL, os.path.join(EXPERIMENTS, "detect_images.py"),
                          f"--checkpoint={shapes_checkpoint}", f"--out_dir={out_dir}", "--min_score=0", *paths],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "No space left on device" in out.stderr and "stopped after 2 image(s)" in out.stderr
    assert "Traceback" not in out.stderr
    # No partial picture, no temporary file left behind.
    assert sorted(os.listdir(out_dir)) == ["detections.json", "image0.png", "image1.png"]
    results = json.loads((out_dir / "detections.json").read_text())
    assert {r["image_id"] for r in results} == {0, 1}


def test_detect_images_checks_its_output_directory_first(tmp_path):
    in_the_way = tmp_path / "taken"
    in_the_way.write_text("a file where the output directory should be")
    out = run("detect_images.py", f"--out_dir={in_the_way}", "--checkpoint=/nonexistent", "x.jpg")
    assert out.returncode != 0 and f"error: cannot write to --out_dir={in_the_way}" in out.stderr
    if os.geteuid() != 0:  # root writes into read-only directories
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o500)
        out = run("detect_images.py", f"--out_dir={read_only}", "--checkpoint=/nonexistent", "x.jpg")
        assert out.returncode != 0 and f"error: cannot write to --out_dir={read_only}" in out.stderr
        assert os.listdir(read_only) == []


def test_detect_images_refuses_bad_options_before_running(tmp_path, shapes_checkpoint):
    paths = write_images(tmp_path, {"a.png": (40, 40)})
    out_dir = tmp_path / "out"
    out = run("detect_images.py", f"--checkpoint={shapes_checkpoint}", f"--out_dir={out_dir}", "--min_score=1.5",
              *paths)
    assert out.returncode != 0 and "--min_score=1.5: 1.5 is not a number in the range [0.0, 1.0]" in out.stderr
    out = run("detect_images.py", f"--checkpoint={shapes_checkpoint}", f"--out_dir={out_dir}",
              "--class_names=cat,dog", *paths)
    assert out.returncode != 0
    assert "--class_names has 2 names but the model has 6 classes: give 5 names" in out.stderr
    assert not (out_dir / "a.png").exists()
