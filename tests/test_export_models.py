"""Every base network exports to every format: SSDLite (hardswish, squeeze-excitation, depthwise
convolutions), NVIDIA's ResNet-50 SSD300 and a Caffe model (OpenCV's res10: Scale, Eltwise, its own
default boxes) each written as StableHLO, SavedModel, TFLite and ONNX, run in their own runtimes in
a fresh process, and compared with ``detect``; TFLite and ONNX at batch 8, on images of another size
than the model's (TFLite resizes inside; ONNX is exported for that size)."""

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

pytestmark = pytest.mark.slow
EXPORT = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "export.py")

# Runs artifacts in their own runtimes, without JAX or ssd_jax: sys.argv[1:] are (format, artifact,
# input .npy, output .npz) quadruples; the whole batch in one call. It then feeds each fixed-shape
# artifact what it was not made for (another batch for TFLite, another size for ONNX), and prints
# what the runtime said and the metadata.
RUN_WITHOUT_JAX = textwrap.dedent("""
    import json, sys
    sys.modules['jax'] = None  # TensorFlow would import it
    sys.modules['ssd_jax'] = None
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter  # LiteRT, TFLite's own runtime
    import onnx, onnxruntime as ort
    args = sys.argv[1:]
    for fmt, path, source, target in zip(args[0::4], args[1::4], args[2::4], args[3::4]):
        images = np.load(source)
        if fmt == "savedmodel":
            outputs = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
            outputs = {k: v.numpy() for k, v in outputs.items()}
        elif fmt == "tflite":
            runner = Interpreter(model_path=path).get_signature_runner("serving_default")
            outputs = runner(images=images)
            try:
                runner(images=images[:1])
            except Exception as error:
                print("REFUSED tflite", str(error).splitlines()[0])
            print("METADATA tflite", open(path + ".json").read().replace("\\n", " "))
        else:
            session = ort.InferenceSession(path)
            outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))
            try:
                session.run(None, {"images": np.zeros((len(images), 201, 251, 3), np.uint8)})
            except Exception as error:
                print("REFUSED onnx", str(error).splitlines()[0])
            print("METADATA onnx", {p.key: p.value for p in onnx.load(path).metadata_props}["ssd_jax"])
        np.savez(target, **outputs)
""")

RUN_STABLEHLO = textwrap.dedent("""
    import sys
    sys.modules['ssd_jax'] = None  # JAX runs it, without this project's code
    import numpy as np, jax
    fmt, path, source, target = sys.argv[1:5]
    outputs = jax.export.deserialize(bytearray(open(path, "rb").read())).call(np.load(source))
    np.savez(target, **{k: np.asarray(v) for k, v in outputs.items()})
""")


def random_images(count, height, width, seed):
    """Smooth random pictures: a random network finds objects in them, as it would in photographs."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 6, 6, 3))
    big = np.kron(coarse, np.ones((1, height // 6 + 1, width // 6 + 1, 1)))[:, :height, :width]
    return np.clip(big + rng.normal(0, 25, big.shape), 0, 255).astype(np.uint8)


def run_artifacts(program, cases, tmp_path) -> tuple[dict, str]:
    """Runs ``program`` once on every (format, artifact, images) of ``cases`` in a fresh process ->
    ({format: outputs}, what it printed)."""
    args = []
    for fmt, path, images in cases:
        np.save(tmp_path / f"{fmt}_in.npy", images)
        args += [fmt, path, str(tmp_path / f"{fmt}_in.npy"), str(tmp_path / f"{fmt}_out.npz")]
    out = subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {fmt: dict(np.load(tmp_path / f"{fmt}_out.npz")) for fmt, _, _ in cases}, out.stdout


def assert_same_detections(outputs, expected, *, boxes_atol, scores_atol):
    """The same number of detections per image, and each of theirs one of ours (class, score, box):
    their runtimes may order exactly equal scores otherwise (a portable NMS)."""
    np.testing.assert_array_equal(outputs["num_detections"], expected.num_detections)
    assert int(np.sum(expected.num_detections)) >= len(expected.num_detections)  # work for the comparison
    for i, n in enumerate(np.asarray(expected.num_detections)):
        boxes, scores = np.asarray(expected.boxes[i, :n]), np.asarray(expected.scores[i, :n])
        classes = np.asarray(expected.classes[i, :n])
        for box, score, label in zip(outputs["boxes"][i, :n], outputs["scores"][i, :n], outputs["classes"][i, :n]):
            same = ((classes == label) & (np.abs(scores - score) <= scores_atol)
                    & (np.max(np.abs(boxes - box), axis=1) <= boxes_atol))
            assert same.any(), f"image {i}: class {label}, score {score}, box {box} is not among detect's"


def preset_model(name):
    # The base network is what differs between exports; 6 classes keep the runtimes' NMS loops short.
    config = configs.get(name, num_classes=6)
    return jax.tree.map(np.asarray, spread_params(config, factor=8.0)), config


def res10_model(files):
    prototxt, caffemodel = files
    return ssd_jax.weights.from_caffe(prototxt, caffemodel, mean_bgr=(104.0, 177.0, 123.0))


# StableHLO and the SavedModel carry detect's own XLA program (jax.export; jax2tf's XlaCallModule):
# what could differ per base network is in the two converters that rewrite it op by op, TFLite's
# and jax2onnx. So the presets are checked in those two, and the Caffe network (its own layers) in
# all four; tests/test_export.py checks every format on ssd_tiny.
FORMATS_CHECKED = {"ssdlite320_mobilenet_v3_large": ("tflite", "onnx"), "ssd300_resnet50": ("tflite", "onnx"),
                   "caffe_res10": ("stablehlo", "savedmodel", "tflite", "onnx")}


@pytest.mark.parametrize("model", list(FORMATS_CHECKED))
def test_every_format_gives_detects_detections(model, tmp_path, request):
    if model == "caffe_res10":
        params, config = res10_model(request.getfixturevalue("res10_files"))
    else:
        params, config = preset_model(model)
    other = config.image_size - 60  # a size the model was not made for
    images = {"stablehlo": random_images(2, config.image_size, config.image_size, seed=1),
              "savedmodel": random_images(3, other, other + 40, seed=2),  # any batch, any size
              "tflite": random_images(8, other + 20, other - 10, seed=3),  # batch 8, any size
              "onnx": random_images(8, other, other, seed=4)}  # batch 8 at the size it was exported for
    images = {fmt: images[fmt] for fmt in FORMATS_CHECKED[model]}
    paths = {fmt: str(tmp_path / f"model.{fmt}") for fmt in images}
    if model == "caffe_res10":  # from the command line, which must not print TensorFlow's notes about our code
        ckpt = checkpoint.save_params(tmp_path / "ckpt", params, config, metadata={"class_names": ["face"]})
        out = subprocess.run([sys.executable, EXPORT, f"--checkpoint={ckpt}", "--format=tflite", "--batch=8",
                              f"--out={paths['tflite']}"], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        for noise in ("Please report this to the TensorFlow team", "AutoGraph", "Importing a function"):
            assert noise not in out.stderr, out.stderr[-3000:]
    else:
        export.export(params, config, paths["tflite"], format="tflite", batch=8)
    if "stablehlo" in images:
        export.export(params, config, paths["stablehlo"], format="stablehlo")
    if "savedmodel" in images:
        export.export(params, config, paths["savedmodel"], format="savedmodel")
    export.export(params, config, paths["onnx"], format="onnx", batch=8, input_size=other)

    outputs, printed = run_artifacts(RUN_WITHOUT_JAX, [(fmt, paths[fmt], images[fmt]) for fmt in
                                                       ("savedmodel", "tflite", "onnx") if fmt in images], tmp_path)
    if "stablehlo" in images:
        outputs.update(run_artifacts(RUN_STABLEHLO, [("stablehlo", paths["stablehlo"], images["stablehlo"])],
                                     tmp_path)[0])
    for fmt, output in outputs.items():
        expected = ssd_jax.detect(params, images[fmt], config=config)
        # StableHLO is the same XLA program; the others compute in their own order (and TF resizes).
        tolerance = dict(boxes_atol=1e-5, scores_atol=1e-5) if fmt == "stablehlo" else dict(boxes_atol=2e-3,
                                                                                           scores_atol=2e-4)
        assert_same_detections(output, expected, **tolerance)
    # A fixed-shape artifact refuses other shapes instead of answering for part of them.
    assert "REFUSED tflite" in printed and "REFUSED onnx" in printed, printed
    metadata = {line.split()[1]: json.loads(line.split(" ", 2)[2]) for line in printed.splitlines()
                if line.startswith("METADATA")}
    assert (metadata["tflite"]["batch"], metadata["tflite"]["image_size"]) == (8, "free")
    assert (metadata["onnx"]["batch"], metadata["onnx"]["image_size"]) == (8, other)
    assert metadata["onnx"]["config"]["name"] == config.name
    # What a format cannot do is refused before anything is written.
    with pytest.raises(export.ExportError, match="input_size fixes the image size of ONNX models only"):
        export.export(params, config, str(tmp_path / "refused.tflite"), format="tflite", input_size=other)
    assert not os.path.exists(tmp_path / "refused.tflite")
