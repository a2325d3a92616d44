"""Exported detectors reloaded where neither JAX nor ssd_jax can be imported give detect's
detections: StableHLO, TF SavedModel (any batch and size), TFLite and ONNX (fixed batch)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from random_models import spread_params

import ssd_jax
from ssd_jax import checkpoint, configs, export

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments")
CONFIG = configs.ssd_tiny(num_classes=4)
NAMES = ("cat", "dog", "bird")
# Where the runtimes start: refuse JAX (TensorFlow would otherwise import it) and ssd_jax.
NO_JAX = "import sys\nsys.modules['jax'] = None\nsys.modules['ssd_jax'] = None\n"


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(np.asarray, spread_params(CONFIG))


def images(count, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def run_fresh(program, path, tmp_path, batches) -> tuple[list, str]:
    """Runs ``program`` on the artifact at ``path`` in a fresh process, each batch of ``batches``
    in turn -> (the outputs of each, as dicts of arrays; what the program printed)."""
    pairs = []
    for i, batch in enumerate(batches):
        np.save(tmp_path / f"in{i}.npy", batch)
        pairs += [str(tmp_path / f"in{i}.npy"), str(tmp_path / f"out{i}.npz")]
    out = subprocess.run([sys.executable, "-c", program, str(path), *pairs], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return [dict(np.load(tmp_path / f"out{i}.npz")) for i in range(len(batches))], out.stdout


def assert_same_detections(outputs, expected, *, boxes_atol=1e-3, scores_atol=1e-4):
    np.testing.assert_array_equal(outputs["num_detections"], expected.num_detections)
    np.testing.assert_array_equal(outputs["classes"], expected.classes)
    np.testing.assert_allclose(outputs["boxes"], expected.boxes, atol=boxes_atol)
    np.testing.assert_allclose(outputs["scores"], expected.scores, atol=scores_atol)
    assert int(np.sum(expected.num_detections)) > 0


# Each program: sys.argv[1] the artifact, then (input .npy, output .npz) pairs.
RUN_SAVEDMODEL = NO_JAX + textwrap.dedent("""
    import numpy as np, tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    for source, target in zip(sys.argv[2::2], sys.argv[3::2]):
        outputs = model.signatures["serving_default"](images=tf.constant(np.load(source)))
        np.savez(target, **{k: v.numpy() for k, v in outputs.items()})
    print(open(model.metadata.asset_path.numpy().decode()).read())
""")

RUN_TFLITE = NO_JAX + textwrap.dedent("""
    import numpy as np
    sys.modules["tensorflow"] = None  # LiteRT, TFLite's own runtime, runs without TensorFlow ...
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # ... where it installs; elsewhere TensorFlow's (deprecated) interpreter
        del sys.modules["tensorflow"]
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    runner = Interpreter(model_path=sys.argv[1]).get_signature_runner("serving_default")
    for source, target in zip(sys.argv[2::2], sys.argv[3::2]):
        batch = np.load(source)
        results = [runner(images=image[None]) for image in batch]  # the model's batch is fixed at 1
        np.savez(target, **{k: np.concatenate([r[k] for r in results]) for k in results[0]})
    try:  # another batch fails instead of answering for the first image
        runner(images=np.concatenate([batch[:1], batch[:1]]))
    except Exception as error:
        print("REFUSED", str(error).splitlines()[0])
    print("RUNTIME", Interpreter.__module__)
""")

RUN_ONNX = NO_JAX + textwrap.dedent("""
    import json, numpy as np, onnx, onnxruntime as ort
    session = ort.InferenceSession(sys.argv[1])
    names = [o.name for o in session.get_outputs()]
    for source, target in zip(sys.argv[2::2], sys.argv[3::2]):
        results = [dict(zip(names, session.run(None, {"images": image[None]}))) for image in np.load(source)]
        np.savez(target, **{k: np.concatenate([r[k] for r in results]) for k in names})
    try:  # another image size fails in ONNX Runtime's own input check
        session.run(None, {"images": np.zeros((1, 201, 251, 3), np.uint8)})
    except Exception as error:
        print("REFUSED", str(error).splitlines()[0])
    print(json.dumps({p.key: p.value for p in onnx.load(sys.argv[1]).metadata_props}))
""")

RUN_STABLEHLO = textwrap.dedent("""
    import sys
    sys.modules['ssd_jax'] = None  # the program needs JAX, not this project's code
    import numpy as np, jax
    exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    for source, target in zip(sys.argv[2::2], sys.argv[3::2]):
        outputs = exported.call(np.load(source))
        np.savez(target, **{k: np.asarray(v) for k, v in outputs.items()})
""")


def test_savedmodel_serves_any_batch_and_size_from_one_artifact(params, tmp_path):
    path = export.export(params, CONFIG, str(tmp_path / "savedmodel"), format="savedmodel", class_names=NAMES)
    batches = [images(count, height, width, seed=count) for count, height, width in ((1, 128, 128), (7, 90, 150))]
    outputs, stdout = run_fresh(RUN_SAVEDMODEL, path, tmp_path, batches)
    meta = json.loads(stdout)
    assert meta["class_names"] == list(NAMES) and meta["config"]["name"] == "ssd_tiny"
    for batch, output in zip(batches, outputs):
        # TF resizes and computes in another order than XLA: float noise; the same detections.
        assert_same_detections(output, ssd_jax.detect(params, batch, config=CONFIG))
    assert export.is_artifact(path, "savedmodel") and not export.is_artifact(path, "tflite")
    with pytest.raises(export.ExportError, match="already holds a savedmodel export; pass --overwrite"):
        export.export(params, CONFIG, path, format="savedmodel")  # refused before any work


@pytest.mark.parametrize("fmt, program", [("tflite", RUN_TFLITE), ("onnx", RUN_ONNX)])
def test_fixed_batch_formats_give_the_same_detections(params, tmp_path, fmt, program):
    if fmt == "onnx":  # the optional extra: pip install -e '.[export]' && pip install --no-deps jax2onnx
        pytest.importorskip("onnxruntime")
        pytest.importorskip("jax2onnx")
    path = str(tmp_path / f"model.{fmt}")
    if fmt == "tflite":  # from the command line, which must not print TensorFlow's notes about our code
        ckpt = checkpoint.save_params(tmp_path / "ckpt", params, CONFIG, metadata={"class_names": list(NAMES)})
        out = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, "export.py"), f"--checkpoint={ckpt}",
                              "--format=tflite", f"--out={path}"], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        for noise in ("Please report this to the TensorFlow team", "AutoGraph", "Importing a function"):
            assert noise not in out.stderr, out.stderr[-3000:]
    else:
        export.export(params, CONFIG, path, format=fmt, class_names=NAMES)
    # TFLite resizes inside as the SavedModel does: any image size, here 201 x 251 too.
    sizes = [(1, 128, 128), (3, 128, 128)] + ([(2, 201, 251)] if fmt == "tflite" else [])
    batches = [images(count, height, width, seed=10 + count) for count, height, width in sizes]
    outputs, stdout = run_fresh(program, path, tmp_path, batches)
    for batch, output in zip(batches, outputs):
        assert_same_detections(output, ssd_jax.detect(params, batch, config=CONFIG))
    assert "REFUSED" in stdout, stdout  # a batch (TFLite) or image size (ONNX) it was not made for
    if fmt == "onnx":
        meta = json.loads(json.loads(stdout.splitlines()[-1])["ssd_jax"])
        assert meta["image_size"] == CONFIG.image_size
    else:
        meta = json.loads(open(f"{path}.json").read())
        assert meta["image_size"] == "free"
        assert "RUNTIME ai_edge_litert" in stdout or importlib.util.find_spec("ai_edge_litert") is None
    assert meta["class_names"] == list(NAMES) and meta["batch"] == 1


def test_stablehlo_from_the_command_line_serves_any_batch(params, tmp_path):
    ckpt = checkpoint.save_params(tmp_path / "ckpt", params, CONFIG, metadata={"class_names": list(NAMES)})
    out = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, "export.py"), f"--checkpoint={ckpt}",
                          "--format=stablehlo", f"--out={tmp_path / 'model.stablehlo'}"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "model.stablehlo.json").read_text())["class_names"] == list(NAMES)
    batches = [images(count, height, width, seed=20 + count) for count, height, width in ((1, 100, 100), (7, 128, 96))]
    outputs, _ = run_fresh(RUN_STABLEHLO, tmp_path / "model.stablehlo", tmp_path, batches)
    for batch, output in zip(batches, outputs):
        assert_same_detections(output, ssd_jax.detect(params, batch, config=CONFIG), boxes_atol=1e-5,
                               scores_atol=1e-6)


def test_bad_exports_are_refused_clearly(params, tmp_path):
    script = os.path.join(EXPERIMENTS, "export.py")
    out = subprocess.run([sys.executable, script, f"--checkpoint={tmp_path / 'none'}", "--format=onnx",
                          f"--out={tmp_path / 'x.onnx'}"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "not a complete ssd_jax parameter checkpoint" in out.stderr
    out = subprocess.run([sys.executable, script, f"--checkpoint={tmp_path}", "--format=keras",
                          f"--out={tmp_path / 'x'}"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "--format" in out.stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(export.ExportError, match="cannot write the export"):
        export.export(params, CONFIG, str(blocker / "model.stablehlo"), format="stablehlo")
    with pytest.raises(export.ExportError, match="unknown format"):
        export.export(params, CONFIG, str(tmp_path / "m"), format="keras")
