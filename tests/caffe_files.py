"""Writes Caffe files for the tests: an SSD300 deploy prototxt in weiliu89's layout and a
caffemodel (binary protobuf NetParameter) holding given weights.

The protobuf encoder here is written apart from ``ssd_jax.caffe``'s reader, from the wire-format
rules (varint keys, length-delimited messages, packed repeated fields) and caffe.proto's field
numbers: NetParameter.layer = 100; LayerParameter name = 1, type = 2, blobs = 7; BlobProto
data = 5 (packed float), shape = 7; BlobShape dim = 1 (packed int64).
"""

from __future__ import annotations

import numpy as np


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(array: np.ndarray) -> bytes:
    shape = _field(1, b"".join(_varint(int(d)) for d in array.shape))
    return _field(7, shape) + _field(5, np.asarray(array, "<f4").tobytes())


def write_caffemodel(path, layers: list[tuple[str, str, list[np.ndarray]]]) -> None:
    """layers: (name, type, blobs) in network order -> a .caffemodel at ``path``."""
    message = b"".join(_field(100, _field(1, name.encode()) + _field(2, kind.encode())
                                  + b"".join(_field(7, _blob(b)) for b in blobs))
                       for name, kind, blobs in layers)
    with open(path, "wb") as f:
        f.write(message)


# ----------------------------------------------------------------------------- weiliu89's SSD300
SOURCES = ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")
MIN_SIZES = (30, 60, 111, 162, 213, 264)
MAX_SIZES = (60, 111, 162, 213, 264, 315)
STEPS = (8, 16, 32, 64, 100, 300)
RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))


def ssd300_prototxt(num_classes: int = 21, width: int = 64) -> tuple[str, list[tuple[str, int, int, int]]]:
    """weiliu89's VGG16 SSD300 deploy prototxt, its widths scaled by ``width`` / 64 (64: the
    original) -> (text, [(conv name, inputs, outputs, kernel)] in order, for the weights)."""
    w = lambda channels: max(1, channels * width // 64)  # noqa: E731
    lines = ['name: "VGG_VOC0712_SSD_300x300_deploy"', 'input: "data"',
             "input_shape { dim: 1 dim: 3 dim: 300 dim: 300 }"]
    convs: list[tuple[str, int, int, int]] = []
    channels = {"data": 3}

    def conv(name, bottom, out, kernel, pad=0, stride=1, dilation=1, relu=True):
        lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                     f"convolution_param {{ num_output: {out} pad: {pad} kernel_size: {kernel} stride: {stride} "
                     f"dilation: {dilation} }} }}")
        convs.append((name, channels[bottom], out, kernel))
        channels[name] = out
        if relu:
            lines.append(f'layer {{ name: "{name.replace("conv", "relu")}_r" type: "ReLU" bottom: "{name}" '
                         f'top: "{name}" }}')

    def pool(name, bottom, kernel, stride, pad=0):
        lines.append(f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
                     f"pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} pad: {pad} }} }}")
        channels[name] = channels[bottom]

    bottom = "data"
    for block, (depth, out) in enumerate(zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)), start=1):
        for index in range(1, depth + 1):
            name = f"conv{block}_{index}"
            conv(name, bottom, w(out), 3, pad=1)
            bottom = name
        if block < 5:
            pool(f"pool{block}", bottom, 2, 2)
            bottom = f"pool{block}"
    pool("pool5", bottom, 3, 1, pad=1)
    conv("fc6", "pool5", w(1024), 3, pad=6, dilation=6)
    conv("fc7", "fc6", w(1024), 1)
    bottom = "fc7"
    for i, (mid, out, stride, pad) in enumerate(((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0),
                                                 (128, 256, 1, 0)), start=6):
        conv(f"conv{i}_1", bottom, w(mid), 1)
        conv(f"conv{i}_2", f"conv{i}_1", w(out), 3, pad=pad, stride=stride)
        bottom = f"conv{i}_2"
    lines.append('layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" top: "conv4_3_norm" '
                 "norm_param { across_spatial: false scale_filler { type: \"constant\" value: 20 } "
                 "channel_shared: false } }")
    channels["conv4_3_norm"] = channels["conv4_3"]
    for kind in ("loc", "conf", "priorbox"):
        for i, source in enumerate(SOURCES):
            boxes = 2 + 2 * len(RATIOS[i])
            head = f"{source}_mbox_{kind}"
            if kind == "priorbox":
                ratios = " ".join(f"aspect_ratio: {r}" for r in RATIOS[i])
                lines.append(f'layer {{ name: "{head}" type: "PriorBox" bottom: "{source}" bottom: "data" '
                             f'top: "{head}" prior_box_param {{ min_size: {MIN_SIZES[i]} max_size: {MAX_SIZES[i]} '
                             f"{ratios} flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 "
                             f"variance: 0.2 step: {STEPS[i]} offset: 0.5 }} }}")
                continue
            conv(head, source, boxes * (4 if kind == "loc" else num_classes), 3, pad=1, relu=False)
            lines.append(f'layer {{ name: "{head}_perm" type: "Permute" bottom: "{head}" top: "{head}_perm" '
                         "permute_param { order: 0 order: 2 order: 3 order: 1 } }")
            lines.append(f'layer {{ name: "{head}_flat" type: "Flatten" bottom: "{head}_perm" top: "{head}_flat" '
                         "flatten_param { axis: 1 } }")
        parts = " ".join(f'bottom: "{s}_mbox_{kind}{"" if kind == "priorbox" else "_flat"}"' for s in SOURCES)
        axis = 2 if kind == "priorbox" else 1
        lines.append(f'layer {{ name: "mbox_{kind}" type: "Concat" {parts} top: "mbox_{kind}" '
                     f"concat_param {{ axis: {axis} }} }}")
    lines += [
        'layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape" '
        f"reshape_param {{ shape {{ dim: 0 dim: -1 dim: {num_classes} }} }} }}",
        'layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax" '
        "softmax_param { axis: 2 } }",
        'layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten" '
        "flatten_param { axis: 1 } }",
        'layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten" '
        'bottom: "mbox_priorbox" top: "detection_out" include { phase: TEST } detection_output_param { '
        f"num_classes: {num_classes} share_location: true background_label_id: 0 nms_param {{ nms_threshold: 0.45 "
        "top_k: 400 } code_type: CENTER_SIZE keep_top_k: 200 confidence_threshold: 0.01 } }",
    ]
    return "\n".join(lines) + "\n", convs


def random_ssd300_weights(convs, seed: int = 0) -> list[tuple[str, str, list[np.ndarray]]]:
    """He-initialised convolutions with small random biases and the Normalize scale; conv1_1
    scaled for pixels of about +-100 and the heads for logits of a few units, so that scores and
    boxes spread (saturated softmaxes would tie, and ties leave the order of detections open)."""
    rng = np.random.default_rng(seed)
    layers = []
    for name, cin, cout, kernel in convs:
        std = np.sqrt(2.0 / (cin * kernel * kernel))
        std *= 0.01 if name == "conv1_1" else 0.1 if "_mbox_" in name else 1.0
        layers.append((name, "Convolution", [rng.normal(0, std, (cout, cin, kernel, kernel)).astype(np.float32),
                                             rng.normal(0, 0.05, cout).astype(np.float32)]))
        if name == "conv4_3":
            layers.append(("conv4_3_norm", "Normalize", [np.full(cout, 20.0, np.float32)
                                                         * rng.uniform(0.5, 1.5, cout).astype(np.float32)]))
    return layers
