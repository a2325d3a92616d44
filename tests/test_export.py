"""Exported detectors reloaded where neither JAX nor ssd_jax can be imported give detect's
detections: the SavedModel at any batch and size, StableHLO from the command line, and exports that
are refused. tests/test_export_models.py exports every base network to every format."""

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
from ssd_jax import artifacts, checkpoint, configs, export

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
    # What evaluate.py --artifact runs: the same detections through ssd_jax.artifacts.
    loaded = artifacts.load(path)
    assert (loaded.format, loaded.batch, loaded.image_size, loaded.class_names) == ("savedmodel", None, None,
                                                                                   list(NAMES))
    assert_same_detections(loaded(batches[1])._asdict(), ssd_jax.detect(params, batches[1], config=CONFIG))
    with pytest.raises(export.ExportError, match="already holds a savedmodel export; pass --overwrite"):
        export.export(params, CONFIG, path, format="savedmodel")  # refused before any work


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
    loaded = artifacts.load(tmp_path / "model.stablehlo")  # what evaluate.py --artifact runs
    assert (loaded.format, loaded.batch, loaded.config) == ("stablehlo", None, CONFIG)
    assert_same_detections(loaded(batches[1])._asdict(), ssd_jax.detect(params, batches[1], config=CONFIG),
                           boxes_atol=1e-5, scores_atol=1e-6)


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
