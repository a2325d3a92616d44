"""int8 export (ONNX Runtime's static quantization, TensorFlow's TFLite converter) and the
evaluation of exported artifacts (experiments/evaluate.py --artifact), on a small model trained
on a generated VOC folder (conftest.trained_on_voc_folder, shared with tests/test_own_data.py)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import built_once
from PIL import Image

import ssd_jax
from ssd_jax import artifacts, checkpoint, configs, quantize
from ssd_jax.detect import resize_images
from ssd_jax.nms import Detections

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments")


def script(name, *args):
    return subprocess.run([sys.executable, os.path.join(EXPERIMENTS, name), *args], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def onnx_pair(trained_on_voc_folder, voc_folder, tmp_path_factory):
    """(float ONNX path, int8 ONNX path, what the int8 export printed), batch 8, from the command
    line; exported once per test run."""
    workdir, _ = trained_on_voc_folder

    def export_both(out_dir):
        out = script("export.py", f"--checkpoint={workdir / 'params'}", "--format=onnx", "--batch=8",
                     f"--out={out_dir / 'float.onnx'}")
        assert out.returncode == 0, out.stderr[-3000:]
        out = script("export.py", f"--checkpoint={workdir / 'params'}", "--format=onnx", "--batch=8",
                     "--quantize=int8", f"--calibration_images={voc_folder / 'JPEGImages'}", "--calibration_count=30",
                     f"--out={out_dir / 'int8.onnx'}")
        assert out.returncode == 0, out.stderr[-3000:]
        (out_dir / "printed.txt").write_text(out.stdout)

    out_dir = built_once(tmp_path_factory, "onnx_pair", export_both)
    return str(out_dir / "float.onnx"), str(out_dir / "int8.onnx"), (out_dir / "printed.txt").read_text()


# Runs both ONNX files in ONNX Runtime in a process without JAX or ssd_jax: argv[1:] = float path,
# int8 path, input .npy, output .npz.
RUN_ONNX = textwrap.dedent("""
    import json, sys
    sys.modules['jax'] = None
    sys.modules['ssd_jax'] = None
    import numpy as np, onnx, onnxruntime as ort
    outputs = {}
    for name, path in (("float", sys.argv[1]), ("int8", sys.argv[2])):
        session = ort.InferenceSession(path)
        values = session.run(None, {"images": np.load(sys.argv[3])})
        outputs.update({f"{name}_{o.name}": v for o, v in zip(session.get_outputs(), values)})
        print("METADATA", name, {p.key: p.value for p in onnx.load(path).metadata_props}["ssd_jax"])
    np.savez(sys.argv[4], **outputs)
""")


def test_int8_onnx_finds_the_float_detections_in_a_runtime_without_jax(onnx_pair, voc_folder, tmp_path):
    float_path, int8_path, printed = onnx_pair
    ratio = os.path.getsize(int8_path) / os.path.getsize(float_path)
    assert ratio <= 0.35, ratio
    assert "int8 file:" in printed and "against the float model:" in printed, printed
    stems = (voc_folder / "ImageSets" / "Main" / "test.txt").read_text().split()[:8]
    images = np.stack([quantize.resize_to_uint8(ssd_jax.image_io.read_image(voc_folder / "JPEGImages" / f"{s}.jpg"),
                                                128) for s in stems])
    np.save(tmp_path / "in.npy", images)
    out = subprocess.run([sys.executable, "-c", RUN_ONNX, float_path, int8_path, str(tmp_path / "in.npy"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npz")
    detections = {name: Detections(*(outputs[f"{name}_{key}"] for key in Detections._fields))
                  for name in ("float", "int8")}
    comparison = quantize.compare_detections(detections["float"], detections["int8"], min_score=0.3)
    print(f"\nint8 against float: {quantize.describe_comparison(comparison)}; file {ratio:.3f}x")
    assert comparison["detections"] >= 8  # a trained model: work for the comparison
    assert comparison["found"] >= 0.8 and comparison["mean_iou"] > 0.8, comparison
    metadata = {line.split()[1]: json.loads(line.split(" ", 2)[2]) for line in out.stdout.splitlines()
                if line.startswith("METADATA")}
    assert "quantization" not in metadata["float"]
    settings = metadata["int8"]["quantization"]
    assert settings["dtype"] == "int8" and settings["format"] == "QDQ" and settings["calibration_images"] == 30
    assert metadata["int8"]["class_names"] == metadata["float"]["class_names"]


def evaluated(out_dir):
    return json.loads((out_dir / "metrics.json").read_text())


def test_evaluate_runs_artifacts_as_it_runs_the_checkpoint(trained_on_voc_folder, voc_folder, onnx_pair, tmp_path):
    workdir, _ = trained_on_voc_folder
    float_path, int8_path, _ = onnx_pair
    data = ["--dataset=vocdir", f"--data_dir={voc_folder}"]
    out = script("evaluate.py", f"--checkpoint={workdir / 'params'}", *data, f"--out_dir={tmp_path / 'ckpt'}")
    assert out.returncode == 0, out.stderr[-3000:]
    reference = evaluated(tmp_path / "ckpt")
    assert reference["voc07_mAP"] > 0.02  # detections to score
    tflite = str(tmp_path / "int8.tflite")
    out = script("export.py", f"--checkpoint={workdir / 'params'}", "--format=tflite", "--batch=4", "--quantize=int8",
                 f"--calibration_images={voc_folder / 'JPEGImages' / 'shape_00001*.jpg'}", f"--out={tflite}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "calibrating on 10 images" in out.stdout, out.stdout
    results = {}
    for name, path in (("float", float_path), ("int8", int8_path), ("tflite_int8", tflite)):
        out = script("evaluate.py", f"--artifact={path}", *data, f"--out_dir={tmp_path / name}")
        assert out.returncode == 0, out.stderr[-3000:]
        kind = "tflite of ssd_tiny" if path.endswith(".tflite") else "onnx of ssd_tiny"
        assert "| **mAP** |" in out.stdout and kind in out.stdout, out.stdout[-2000:]
        assert sorted(os.listdir(tmp_path / name)) == sorted(os.listdir(tmp_path / "ckpt"))  # the same report
        results[name] = evaluated(tmp_path / name)
    print("\nVOC07 mAP:", {name: round(r["voc07_mAP"], 4) for name, r in
                           {"checkpoint": reference, **results}.items()})
    # The float artifact runs the same model with the same post-processing (its own NMS ops).
    for key in ("voc07_mAP", "voc_mAP", "coco/AP"):
        assert abs(results["float"][key] - reference[key]) <= 0.005, (key, results["float"][key], reference[key])
    for name in ("int8", "tflite_int8"):  # 10 test images: a loose bound here; RESULTS.md has the measurements
        assert abs(results[name]["voc07_mAP"] - reference["voc07_mAP"]) <= 0.1, (name, results[name])


def test_load_gives_a_detector_with_the_artifacts_metadata(onnx_pair, trained_on_voc_folder):
    _, int8_path, _ = onnx_pair
    artifact = artifacts.load(int8_path)
    _, config = checkpoint.load_params(trained_on_voc_folder[0] / "params")
    assert (artifact.format, artifact.batch, artifact.image_size) == ("onnx", 8, 128)
    assert artifact.config == config and artifact.class_names == ["circle", "hexagon", "square", "star", "triangle"]
    assert artifact.quantization["dtype"] == "int8" and "int8" in artifact.describe()
    images = np.random.default_rng(0).integers(0, 256, (8, 128, 128, 3), dtype=np.uint8)
    detections = artifact(images)
    assert detections.boxes.shape == (8, 200, 4) and detections.classes.dtype == np.int32
    with pytest.raises(artifacts.ArtifactError, match="batches of exactly 8"):
        artifact(images[:3])
    with pytest.raises(artifacts.ArtifactError, match="takes 128x128 images"):
        artifact(np.zeros((8, 100, 128, 3), np.uint8))


# ----------------------------------------------------------------------------- bad input
def test_bad_calibration_images_and_formats_fail_before_any_work(trained_on_voc_folder, tmp_path):
    ckpt = str(trained_on_voc_folder[0] / "params")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    for i in range(3):
        (tmp_path / "broken" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a picture")
    out_path = tmp_path / "m.onnx"
    refused = "--quantize is for onnx and tflite"
    cases = {
        "missing": ([f"--calibration_images={tmp_path / 'nowhere'}"], "does not exist"),
        "empty": ([f"--calibration_images={tmp_path / 'empty'}"], "holds no image file"),
        "unreadable": ([f"--calibration_images={tmp_path / 'broken'}"], "none of the 3 calibration files"),
        "no match": ([f"--calibration_images={tmp_path / 'empty' / '*.png'}"], "no image file matches"),
        "none given": ([], "needs --calibration_images"),
        "savedmodel": (["--format=savedmodel", f"--calibration_images={tmp_path}"], refused),
        "stablehlo": (["--format=stablehlo", f"--calibration_images={tmp_path}"], refused),
    }
    for name, (args, message) in cases.items():
        fmt = [] if any(a.startswith("--format") for a in args) else ["--format=onnx"]
        out = script("export.py", f"--checkpoint={ckpt}", "--quantize=int8", *fmt, *args, f"--out={out_path}")
        assert out.returncode != 0, name
        lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], (name, out.stderr[-2000:])
        assert "Traceback" not in out.stderr, name
        assert not out_path.exists(), name


def test_evaluate_refuses_artifacts_that_do_not_fit(tmp_path, onnx_pair, voc_folder):
    config = configs.ssd_tiny(num_classes=4)  # three classes: the VOC folder has five
    params = jax.tree.map(np.asarray, ssd_jax.init(jax.random.key(0), config))
    three = ssd_jax.export.export(params, config, str(tmp_path / "three.onnx"), format="onnx", batch=2)
    (tmp_path / "notes.txt").write_text("not a model")
    data = ["--dataset=vocdir", f"--data_dir={voc_folder}"]
    cases = {
        "classes": ([f"--artifact={three}", *data], "the model has 4 classes but"),
        "batch": ([f"--artifact={onnx_pair[0]}", "--batch_size=4", *data], "runs batches of exactly 8 images"),
        "not ours": ([f"--artifact={tmp_path / 'notes.txt'}", *data], "is not an ssd_jax artifact"),
        "missing": ([f"--artifact={tmp_path / 'gone.onnx'}", *data], "no artifact at"),
        "both": ([f"--artifact={onnx_pair[0]}", f"--checkpoint={tmp_path}", *data], "give exactly one of"),
    }
    for name, (args, message) in cases.items():
        out = script("evaluate.py", *args, f"--out_dir={tmp_path / name}")
        assert out.returncode != 0, name
        assert message in out.stderr and "Traceback" not in out.stderr, (name, out.stderr[-2000:])
        assert not (tmp_path / name / "metrics.json").exists(), name


def test_calibration_images_are_detects_pixels(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    (tmp_path / "b.txt").write_text("not an image file")
    images, unreadable = quantize.calibration_images(str(tmp_path), 32)
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8 and not unreadable
    expected = np.clip(np.rint(np.asarray(resize_images(image[None], 32)[0])), 0, 255)
    np.testing.assert_array_equal(images[0], expected)
    batches = quantize.fixed_batches(np.arange(5), 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 0, 1, 2]]
