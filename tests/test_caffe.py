"""Caffe SSD models: the readers, and OpenCV DNN (an independent runtime of the same files) as
the reference, on the res10 face detector's real trained weights and real photographs, and on a
weiliu89-layout VGG16 SSD300 that the test writes itself."""

import os
import subprocess
import sys

import numpy as np
import pytest
from caffe_files import random_ssd300_weights, ssd300_prototxt, write_caffemodel

import ssd_jax
from ssd_jax import caffe
from ssd_jax.models.caffe_net import CaffeLayer, CaffeNetSettings, output_size

REPO = os.path.join(os.path.dirname(__file__), os.pardir)
RES10_MEAN_BGR = (104.0, 177.0, 123.0)  # the res10 model (conftest.res10_files) was trained with it


# ----------------------------------------------------------------------------- readers
def test_prototxt_text_format():
    net = caffe.parse_prototxt('''
        name: "x"  # a comment
        input: "data"
        layer { name: "a" type: "Convolution" bottom: "data" top: "a"
                convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
        layer < name: 'b' type: "Pooling" pooling_param { pool: MAX kernel_size: 2 } include { phase: TEST } >
        layer { name: "c" type: "Eltwise" eltwise_param { coeff: [1.0, -2] } }
        layer { name: "d#1" type: "Pooling" # a "quoted" comment {
                pooling_param { kernel_size: 2 # "2x2"
                                stride: 2 } top: "é" }''')
    assert net["name"] == ["x"] and len(net["layer"]) == 4
    conv = net["layer"][0]["convolution_param"][0]
    assert conv["num_output"] == [8] and conv["kernel_size"] == [3] and conv["weight_filler"][0]["type"] == ["msra"]
    assert net["layer"][1]["pooling_param"][0]["pool"] == ["MAX"]
    assert net["layer"][1]["include"][0]["phase"] == ["TEST"]
    assert net["layer"][2]["eltwise_param"][0]["coeff"] == [1.0, -2]
    assert net["layer"][3] == {"name": ["d#1"], "type": ["Pooling"], "top": ["é"],
                               "pooling_param": [{"kernel_size": [2], "stride": [2]}]}


def test_caffemodel_wire_format(tmp_path):
    """Blobs of the current and the old encodings, packed and unpacked floats, read back."""
    weight = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    path = tmp_path / "net.caffemodel"
    write_caffemodel(path, [("conv", "Convolution", [weight, np.array([1.5, -2], np.float32)]),
                            ("relu", "ReLU", [])])
    blobs = caffe.read_caffemodel(path)
    assert list(blobs) == ["conv"]
    np.testing.assert_array_equal(blobs["conv"][0], weight)
    np.testing.assert_array_equal(blobs["conv"][1], [1.5, -2])
    # V1 'layers' (field 2: name 4, blobs 6) with the old num/channels/height/width and unpacked floats.
    blob = b"".join(bytes([n << 3, v]) for n, v in ((1, 1), (2, 1), (3, 1), (4, 2)))
    blob += b"".join(bytes([5 << 3 | 5]) + np.float32(v).tobytes() for v in (3.0, 4.0))
    layer = bytes([4 << 3 | 2, 2]) + b"v1" + bytes([6 << 3 | 2, len(blob)]) + blob
    (tmp_path / "old.caffemodel").write_bytes(bytes([2 << 3 | 2, len(layer)]) + layer)
    np.testing.assert_array_equal(caffe.read_caffemodel(tmp_path / "old.caffemodel")["v1"][0], [[[[3.0, 4.0]]]])
    (tmp_path / "cut.caffemodel").write_bytes(path.read_bytes()[:-7])
    with pytest.raises(caffe.CaffeImportError, match="not a readable caffemodel|holds"):
        caffe.read_caffemodel(tmp_path / "cut.caffemodel")


def test_caffe_pooling_rounds_up_like_caffe():
    """Caffe: out = ceil((in + 2 pad - kernel) / stride) + 1, minus one if the last window would
    start in the padding; convolutions round down."""
    pool = CaffeLayer("max_pool", "p", ("x",), "y", kernel=3, stride=2)
    assert [output_size(pool, n) for n in (150, 75, 38)] == [75, 37, 19]
    assert output_size(CaffeLayer("max_pool", "p", ("x",), "y", kernel=2, stride=2), 75) == 38
    padded = CaffeLayer("avg_pool", "p", ("x",), "y", kernel=3, stride=2, pad=1)
    assert [output_size(padded, n) for n in (5, 6)] == [3, 4]
    conv = CaffeLayer("conv", "c", ("x",), "y", kernel=3, stride=2, pad=1)
    assert [output_size(conv, n) for n in (5, 6)] == [3, 3]


def test_unsupported_layers_are_named(tmp_path):
    text, convs = ssd300_prototxt(width=8)
    text = text.replace('type: "Pooling" bottom: "conv2_2"', 'type: "LRN" bottom: "conv2_2"')
    (tmp_path / "deploy.prototxt").write_text(text)
    write_caffemodel(tmp_path / "w.caffemodel", random_ssd300_weights(convs))
    with pytest.raises(caffe.CaffeImportError, match="'pool2' of type LRN is not supported"):
        ssd_jax.weights.from_caffe(tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel")


# ----------------------------------------------------------------------------- against OpenCV
def opencv_detections(prototxt, caffemodel, images_rgb, mean_bgr):
    """OpenCV DNN's DetectionOutput rows (label, score, x1, y1, x2, y2) per image, one forward each."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV (pip install 'opencv-python-headless<5') is the reference")
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    rows = []
    for image in images_rgb:
        net.setInput(cv2.dnn.blobFromImage(np.ascontiguousarray(image[..., ::-1]), 1.0, (300, 300), mean_bgr,
                                           swapRB=False, crop=False))
        out = net.forward()[0, 0]
        rows.append(out[out[:, 2] > 0, 1:])
    return rows


def matched(ours, theirs, *, above: float) -> tuple[int, int]:
    """OpenCV's detections above ``above`` that ours has too: same class, score within 1e-3, box
    within 2e-3 (normalised, unclipped)."""
    found = total = 0
    for b, rows in enumerate(theirs):
        n = int(ours.num_detections[b])
        scores, boxes, labels = (np.asarray(a[b, :n]) for a in (ours.scores, ours.boxes, ours.classes))
        for label, score, *box in rows[rows[:, 1] > above]:
            total += 1
            found += bool(np.any((labels == label) & (np.abs(scores - score) < 1e-3)
                                 & (np.abs(boxes - np.asarray(box)).max(-1) < 2e-3)))
    return found, total


def sample_photos():
    """Real photographs of scikit-image, resized to 300x300 RGB (the astronaut's face also alone)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image's sample photographs")
    cv2 = pytest.importorskip("cv2")
    astronaut = data.astronaut()
    photos = {"astronaut": astronaut, "camera": np.stack([data.camera()] * 3, -1), "chelsea": data.chelsea(),
              "coffee": data.coffee(), "rocket": data.rocket(), "astronaut_face": astronaut[0:256, 128:384]}
    return {name: cv2.resize(np.ascontiguousarray(image), (300, 300), interpolation=cv2.INTER_LINEAR)
            for name, image in photos.items()}


@pytest.mark.slow
def test_res10_face_detector_gives_opencv_detections_on_photographs(res10_files):
    prototxt, caffemodel = res10_files
    params, config = ssd_jax.weights.from_caffe(prototxt, caffemodel, mean_bgr=RES10_MEAN_BGR)
    assert config.num_classes == 2 and config.postprocess == (0.01, 0.45, 400, 200) and not config.clip_boxes
    photos = sample_photos()
    images = np.stack(list(photos.values()))
    theirs = opencv_detections(prototxt, caffemodel, images, RES10_MEAN_BGR)
    ours = ssd_jax.detect(params, images, config=config)  # the prototxt's DetectionOutput settings
    found, total = matched(ours, theirs, above=0.01)
    faces_found, faces = matched(ours, theirs, above=0.5)
    print(f"\nres10: {found} of OpenCV's {total} detections above 0.01 matched; faces above 0.5: "
          f"{faces_found} of {faces}")
    assert total > 300 and found >= 0.99 * total
    assert faces >= 2 and faces_found == faces


# Variants of the prototxt where Caffe's rules matter: PriorBox clip (corners clipped), an
# aspect ratio that is the flip of another (Caffe drops it), and a layer after the heads that
# rewrites a source in place (the heads read the blob as it was at their place).
VARIANTS = {
    "plain": [],
    "prior_clip": [("clip: false", "clip: true")],
    "flipped_ratio_twice": [("aspect_ratio: 2 flip", "aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 2 flip")],
    "source_rewritten_after_heads": [("layer { name: \"mbox_conf_reshape\"",
                                      'layer { name: "late_relu" type: "ReLU" bottom: "conv4_3_norm" '
                                      'top: "conv4_3_norm" }\nlayer { name: "mbox_conf_reshape"')],
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_weiliu89_vgg16_ssd300_layout_gives_opencv_detections(tmp_path, variant):
    text, convs = ssd300_prototxt(width=16)  # the layout with a quarter of the channels
    for old, new in VARIANTS[variant]:
        assert old in text
        text = text.replace(old, new)
    prototxt, caffemodel = tmp_path / "deploy.prototxt", tmp_path / "VGG_SSD_300x300.caffemodel"
    prototxt.write_text(text)
    write_caffemodel(caffemodel, random_ssd300_weights(convs))
    params, config = ssd_jax.weights.from_caffe(prototxt, caffemodel)
    assert config.feature_map_sizes == (38, 19, 10, 5, 3, 1) and config.num_priors == 8732
    assert config.mean_rgb == (123.0, 117.0, 104.0)
    assert config.prior_clip == ("corners" if variant == "prior_clip" else "none")
    images = np.stack(list(sample_photos().values())[:4])
    theirs = opencv_detections(prototxt, caffemodel, images, caffe.WEILIU89_MEAN_BGR)
    ours = ssd_jax.detect(params, images, config=config)
    found, total = matched(ours, theirs, above=0.01)
    print(f"\nVGG16 SSD300 (weiliu89 layout, random weights, {variant}): {found} of OpenCV's {total} detections "
          "matched")
    assert total > 100 and found >= 0.99 * total


def test_convert_weights_caffe_command(tmp_path):
    text, convs = ssd300_prototxt(width=8)
    (tmp_path / "deploy.prototxt").write_text(text)
    write_caffemodel(tmp_path / "w.caffemodel", random_ssd300_weights(convs))
    out = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "convert_weights.py"),
                             "--format=caffe", f"--prototxt={tmp_path / 'deploy.prototxt'}",
                             f"--input={tmp_path / 'w.caffemodel'}", f"--output={out}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    params, config = ssd_jax.checkpoint.load_params(str(out))
    assert isinstance(config.backbone, CaffeNetSettings) and config.num_classes == 21
    detections = ssd_jax.detect(params, np.zeros((1, 300, 300, 3), np.uint8), config=config)
    assert detections.boxes.shape == (1, 200, 4)
    missing = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "convert_weights.py"),
                              "--format=caffe", f"--input={tmp_path / 'w.caffemodel'}", f"--output={out}2"],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "needs --prototxt" in missing.stderr
