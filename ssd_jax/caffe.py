"""Caffe SSD models in ssd_jax, without Caffe: ``from_caffe(prototxt, caffemodel)``.

The deploy prototxt (protobuf text format) gives the network and the SSD settings; the
caffemodel (binary protobuf) gives the weights. Both are read here with a small reader of the
two protobuf encodings and the few Caffe message fields SSD models use, so neither Caffe nor
the protobuf schema is needed.

What is understood:
- base network: Convolution (groups, dilation), BatchNorm and Scale (folded into the
  convolution before them, else kept as a per-channel affine layer: pre-activation ResNets),
  ReLU, Pooling (MAX, AVE; Caffe rounds output sizes up), Eltwise (SUM), Normalize (across
  channels), Concat (channels), Dropout and Split (pass-through);
- SSD: the mbox_loc / mbox_conf Convolutions and their Permute / Flatten / Reshape / Softmax /
  Concat plumbing, PriorBox (one min_size and max_size per source, aspect ratios with flip, clip,
  step, offset 0.5, variances (v0, v0, v1, v1)) and DetectionOutput (classes, thresholds, top_k,
  keep_top_k, CENTER_SIZE code); ssd_jax's own heads and post-processing do this work.
Anything else is named in a ``CaffeImportError``.

Input: Caffe SSD models take BGR pixels minus a BGR mean. ssd_jax takes RGB, so the layers that
read the input directly (up to and including the first convolutions) get their channels
reversed, and ``mean_rgb`` is the reversed mean.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import numpy as np

from ssd_jax import configs
from ssd_jax.configs import CaffeLayer, SSDConfig

# weiliu89's SSD models subtract this BGR mean (their training prototxts' transform_param).
WEILIU89_MEAN_BGR = (104.0, 117.0, 123.0)


class CaffeImportError(ValueError):
    """A prototxt or caffemodel that this importer cannot turn into an SSD; names the layer."""


# ----------------------------------------------------------------------------- protobuf text format
# Strings first (a '#' or brace inside one is text), then comments (dropped), then the rest.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{}:;,\[\]<>]|[^\s{}:;,\[\]<>"\'#]+')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _tokens(text: str) -> list[str]:
    return [token for token in _TOKEN.findall(text) if not token.startswith("#")]


def _scalar(token: str):
    if token[0] in "\"'":  # the escapes of the text format; other characters as they are (UTF-8 names)
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), token[1:-1])
    if token in ("true", "True"):
        return True
    if token in ("false", "False"):
        return False
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return token  # an enum name, e.g. MAX or CENTER_SIZE


def parse_prototxt(text: str) -> dict[str, list]:
    """Protobuf text format -> {field: [values]}: every field a list (repeated or not), nested
    messages as such dicts, enum values as their names."""
    tokens, position = _tokens(text), 0

    def message(end: str | None) -> dict[str, list]:
        nonlocal position
        fields: dict[str, list] = {}
        while position < len(tokens):
            token = tokens[position]
            if token == end:
                position += 1
                return fields
            if token in ";,":
                position += 1
                continue
            name = token
            position += 1
            if position < len(tokens) and tokens[position] == ":":
                position += 1
            if position >= len(tokens):
                raise CaffeImportError(f"prototxt ends inside field {name!r}")
            if tokens[position] in "{<":
                close = "}" if tokens[position] == "{" else ">"
                position += 1
                fields.setdefault(name, []).append(message(close))
            elif tokens[position] == "[":  # a list of values: name: [a, b]
                position += 1
                while tokens[position] != "]":
                    if tokens[position] != ",":
                        fields.setdefault(name, []).append(_scalar(tokens[position]))
                    position += 1
                position += 1
            else:
                fields.setdefault(name, []).append(_scalar(tokens[position]))
                position += 1
        if end is not None:
            raise CaffeImportError("prototxt ends before a closing brace")
        return fields

    return message(None)


def _one(fields: dict, name: str, default=None):
    values = fields.get(name)
    return values[-1] if values else default


# ----------------------------------------------------------------------------- protobuf binary format
def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of a message: ints for varint/fixed, bytes for length-delimited."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = data[position:position + 8], position + 8
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
        elif wire == 5:
            value, position = data[position:position + 4], position + 4
        else:
            raise CaffeImportError(f"caffemodel: unsupported protobuf wire type {wire} (field {number})")
        if position > end:
            raise CaffeImportError(f"caffemodel: field {number} runs past the end of its message (truncated file?)")
        yield number, wire, value


def _blob(data: bytes) -> np.ndarray:
    """BlobProto -> array: data (5, float32) or double_data (8), shape (7: BlobShape) or the old
    num/channels/height/width (1-4)."""
    floats, doubles, shape, legacy = [], [], None, {}
    for number, wire, value in _fields(data):
        if number == 5:
            floats.append(np.frombuffer(value, "<f4"))  # packed (wire 2) or one value (wire 5)
        elif number == 8:
            doubles.append(np.frombuffer(value, "<f8"))
        elif number == 7:
            dims = []
            for dim_number, dim_wire, dim in _fields(value):
                if dim_number == 1 and dim_wire == 2:
                    position = 0
                    while position < len(dim):
                        item, position = _varint(dim, position)
                        dims.append(item)
                elif dim_number == 1:
                    dims.append(dim)
            shape = tuple(dims)
        elif number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = value
    values = np.concatenate(floats) if floats else (np.concatenate(doubles) if doubles else np.zeros(0))
    if shape is None:  # the old 4-d num, channels, height, width
        shape = tuple(legacy.get(i, 1) for i in (1, 2, 3, 4))
    if int(np.prod(shape)) != values.size:
        raise CaffeImportError(f"caffemodel: a blob of shape {shape} holds {values.size} values")
    return values.astype(np.float32).reshape(shape)


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """A .caffemodel (NetParameter) -> {layer name: [blobs]} for the layers that have blobs.

    Reads the current ``layer`` messages (field 100: name 1, blobs 7) and the old V1 ``layers``
    (field 2: name 4, blobs 6).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"caffemodel not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    weights: dict[str, list[np.ndarray]] = {}
    try:
        for number, wire, value in _fields(data):
            if wire != 2 or number not in (100, 2):
                continue
            name_field, blob_field = (1, 7) if number == 100 else (4, 6)
            name, blobs = None, []
            for field, field_wire, field_value in _fields(value):
                if field == name_field and field_wire == 2:
                    name = field_value.decode("utf-8")
                elif field == blob_field and field_wire == 2:
                    blobs.append(_blob(field_value))
            if name is not None and blobs:
                weights[name] = blobs
    except (IndexError, ValueError, UnicodeDecodeError) as error:  # CaffeImportError is a ValueError
        raise CaffeImportError(f"{path} is not a readable caffemodel (truncated or not a NetParameter): "
                               f"{error}") from error
    if not weights:
        raise CaffeImportError(f"{path} holds no layer with weights: not a caffemodel?")
    return weights


# ----------------------------------------------------------------------------- the network
_PASS_THROUGH = ("Dropout", "Split")
_HEAD_PLUMBING = ("Permute", "Flatten", "Reshape", "Softmax", "Concat", "PriorBox", "DetectionOutput")
_IGNORED = ("Input", "Data", "AnnotatedData", "MultiBoxLoss", "Accuracy", "SoftmaxWithLoss", "Silence")


def _param(layer: dict, group: str) -> dict:
    return _one(layer, group, {}) or {}


def _size(fields: dict, name: str, default: int) -> int:
    """A Caffe size that may be given once, as name_h / name_w, or repeated (equal) for each axis."""
    values = fields.get(name)
    if values:
        if len(set(values)) != 1:
            raise CaffeImportError(f"non-square {name} {values} is not supported")
        return int(values[0])
    h, w = _one(fields, f"{name}_h"), _one(fields, f"{name}_w")
    if h is not None or w is not None:
        if h != w:
            raise CaffeImportError(f"non-square {name}_h {h} / {name}_w {w} is not supported")
        return int(h)
    return default


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _input(net: dict) -> tuple[str, int]:
    """The data blob's name and (square) size, from input/input_shape/input_dim or an Input layer."""
    name, dims = _one(net, "input"), None
    if name is not None:
        shape = _one(net, "input_shape")
        dims = shape["dim"] if shape else net.get("input_dim")
    else:
        for layer in net.get("layer", []):
            if _one(layer, "type") == "Input":
                name = _one(layer, "top")
                dims = _param(_param(layer, "input_param"), "shape").get("dim")
                break
    if name is None or not dims or len(dims) != 4:
        raise CaffeImportError("the prototxt declares no 4-d input (input + input_shape, input_dim, or an Input "
                               "layer): is it a deploy prototxt?")
    if dims[1] != 3 or dims[2] != dims[3]:
        raise CaffeImportError(f"input {name!r} has shape {dims}: ssd_jax needs 3 channels and a square image")
    return name, int(dims[2])


class _Graph:
    """Blob versions: a blob written in place gets a new version, so every layer reads what
    Caffe's order gives it."""

    def __init__(self, input_blob: str):
        self.version = {input_blob: input_blob}
        self.count: Counter = Counter()

    def read(self, blob: str, layer: str) -> str:
        if blob not in self.version:
            raise CaffeImportError(f"layer {layer!r} reads blob {blob!r}, which no earlier layer writes")
        return self.version[blob]

    def write(self, blob: str) -> str:
        self.count[blob] += 1
        version = blob if self.count[blob] == 1 and blob not in self.version else f"{blob}@{self.count[blob]}"
        self.version[blob] = version
        return version

    def alias(self, blob: str, version: str) -> None:
        self.version[blob] = version


def _conv_params(layer: dict, blobs: list[np.ndarray], name: str) -> tuple[dict, dict]:
    p = _param(layer, "convolution_param")
    weight = blobs[0]
    out = int(_one(p, "num_output"))
    groups = int(_one(p, "group", 1))
    if weight.ndim != 4 or weight.shape[0] != out:
        raise CaffeImportError(f"Convolution {name!r}: weight of shape {weight.shape} for num_output {out}")
    bias = blobs[1].reshape(-1) if _one(p, "bias_term", True) and len(blobs) > 1 else np.zeros(out, np.float32)
    spec = {"features": out, "kernel": _size(p, "kernel_size", 1), "stride": _size(p, "stride", 1),
            "pad": _size(p, "pad", 0), "dilation": _size(p, "dilation", 1), "groups": groups}
    return spec, {"kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)), "bias": bias.astype(np.float32)}


def _affine_of(layer: dict, blobs: list[np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm (mean, variance, moving-average factor) or Scale (gamma, beta) -> (gain, shift)."""
    kind = _one(layer, "type")
    if kind == "BatchNorm":
        if len(blobs) < 2:
            raise CaffeImportError(f"BatchNorm {name!r} has {len(blobs)} blobs, expected mean, variance, factor")
        factor = float(blobs[2].reshape(-1)[0]) if len(blobs) > 2 else 1.0
        factor = 1.0 / factor if factor != 0 else 0.0
        mean, variance = blobs[0].reshape(-1) * factor, blobs[1].reshape(-1) * factor
        eps = float(_one(_param(layer, "batch_norm_param"), "eps", 1e-5))
        gain = 1.0 / np.sqrt(variance.astype(np.float64) + eps)
        return gain, -mean * gain
    p = _param(layer, "scale_param")
    if len(layer.get("bottom", [])) != 1 or int(_one(p, "axis", 1)) != 1:
        raise CaffeImportError(f"Scale {name!r}: only a learned per-channel scale (one bottom, axis 1) is supported")
    gain = blobs[0].reshape(-1).astype(np.float64)
    shift = blobs[1].reshape(-1).astype(np.float64) if _one(p, "bias_term", False) and len(blobs) > 1 else 0 * gain
    return gain, shift


def _pool_spec(layer: dict, name: str) -> dict:
    p = _param(layer, "pooling_param")
    method = _one(p, "pool", "MAX")
    kinds = {"MAX": "max_pool", 0: "max_pool", "AVE": "avg_pool", 1: "avg_pool"}
    if method not in kinds:
        raise CaffeImportError(f"Pooling {name!r}: pool {method} is not supported (MAX, AVE)")
    if _one(p, "global_pooling", False):
        return {"kind": kinds[method], "kernel": 0, "stride": 1, "pad": 0}
    if _one(p, "round_mode", "CEIL") not in ("CEIL", 0):
        raise CaffeImportError(f"Pooling {name!r}: round_mode {_one(p, 'round_mode')} is not supported (CEIL)")
    return {"kind": kinds[method], "kernel": _size(p, "kernel_size", 1), "stride": _size(p, "stride", 1),
            "pad": _size(p, "pad", 0)}


def _is_test_only_excluded(layer: dict) -> bool:
    """Layers that the TEST phase leaves out (include { phase: TRAIN } or exclude { phase: TEST })."""
    included = [_one(rule, "phase") for rule in layer.get("include", [])]
    excluded = [_one(rule, "phase") for rule in layer.get("exclude", [])]
    return (bool(included) and all(phase in ("TRAIN", 0) for phase in included)) or any(
        phase in ("TEST", 1) for phase in excluded)


def _trace_heads(layers: list[dict]) -> tuple[list[dict], list[dict], list[dict], dict]:
    """From DetectionOutput back to the per-source loc convs, conf convs and PriorBoxes, in order."""
    outputs = [layer for layer in layers if _one(layer, "type") == "DetectionOutput"]
    if len(outputs) != 1:
        raise CaffeImportError(f"the prototxt has {len(outputs)} DetectionOutput layers; an SSD deploy prototxt "
                               "has one")
    detection = outputs[0]
    bottoms = detection.get("bottom", [])
    if len(bottoms) < 3:
        raise CaffeImportError("DetectionOutput needs loc, conf and prior bottoms")
    writers: dict[str, list[dict]] = {}
    for layer in layers:
        for top in layer.get("top", []):
            writers.setdefault(top, []).append(layer)

    def leaves(blob: str, want: str, seen=()) -> list[dict]:
        """The layers of type ``want`` that feed ``blob`` through head plumbing, in concat order."""
        for layer in reversed(writers.get(blob, [])):
            kind = _one(layer, "type")
            if kind == want:
                return [layer]
            if kind in ("Permute", "Flatten", "Reshape", "Softmax", "Concat"):
                found = []
                for bottom in layer.get("bottom", []):
                    if (bottom, kind) in seen:
                        continue
                    found += leaves(bottom, want, (*seen, (bottom, kind)))
                return found
        raise CaffeImportError(f"cannot trace {blob!r} back to {want} layers through Permute/Flatten/Concat")

    loc = leaves(bottoms[0], "Convolution")
    conf = leaves(bottoms[1], "Convolution")
    priors = leaves(bottoms[2], "PriorBox")
    if not (len(loc) == len(conf) == len(priors)):
        raise CaffeImportError(f"{len(loc)} loc heads, {len(conf)} conf heads and {len(priors)} PriorBox layers: "
                               "they must pair up, one per source")
    return loc, conf, priors, detection


def _prior_settings(priors: list[dict], image_size: int, sizes: list[int]) -> dict:
    mins, maxs, ratios, steps, clips, variances = [], [], [], [], set(), set()
    for layer, size in zip(priors, sizes):
        name = _one(layer, "name")
        p = _param(layer, "prior_box_param")
        if len(p.get("min_size", [])) != 1 or len(p.get("max_size", [])) != 1:
            raise CaffeImportError(f"PriorBox {name!r}: exactly one min_size and one max_size per source are "
                                   f"supported, got {p.get('min_size')} / {p.get('max_size')}")
        if float(_one(p, "offset", 0.5)) != 0.5:
            raise CaffeImportError(f"PriorBox {name!r}: offset {_one(p, 'offset')} is not supported (0.5)")
        image = _size(p, "img_size", image_size)
        if image != image_size:
            raise CaffeImportError(f"PriorBox {name!r}: img_size {image} differs from the input size {image_size}")
        flip = bool(_one(p, "flip", True))
        unique: list[float] = []
        seen = [1.0]  # as Caffe: a ratio already present, or the flip of one, adds nothing
        for ratio in p.get("aspect_ratio", []):
            ratio = float(ratio)
            if any(abs(ratio - r) < 1e-6 for r in seen):
                continue
            unique.append(ratio)
            seen += [ratio, 1.0 / ratio] if flip else [ratio]
        if unique and not flip:
            raise CaffeImportError(f"PriorBox {name!r}: aspect ratios without flip are not supported")
        mins.append(float(p["min_size"][0]))
        maxs.append(float(p["max_size"][0]))
        ratios.append(tuple(unique))
        step = _one(p, "step") or _one(p, "step_h")
        steps.append(float(step) if step else image_size / size)
        clips.add(bool(_one(p, "clip", False)))
        variance = tuple(float(v) for v in p.get("variance", [0.1]))
        if len(variance) == 1:
            variance = variance * 4
        if len(variance) != 4 or variance[0] != variance[1] or variance[2] != variance[3]:
            raise CaffeImportError(f"PriorBox {name!r}: variances {variance} must be (v0, v0, v1, v1)")
        variances.add((variance[0], variance[2]))
    if len(clips) != 1 or len(variances) != 1:
        raise CaffeImportError("PriorBox layers disagree on clip or variance: one value for all is supported")
    return {"min_sizes": tuple(mins), "max_sizes": tuple(maxs), "aspect_ratios": tuple(ratios),
            "steps": tuple(steps), "prior_clip": "corners" if clips.pop() else "none", "variances": variances.pop()}


def _reverse_input_channels(layers: list[CaffeLayer], params: dict, input_blob: str) -> None:
    """Makes a network that reads BGR read RGB: reverses the channel axis of every parameter
    that meets the input's channels, up to and including the convolutions that read them."""
    in_input_order = {input_blob}
    for layer in layers:
        touches = [blob in in_input_order for blob in layer.inputs]
        if not any(touches):
            continue
        if not all(touches) or layer.kind == "concat":
            raise CaffeImportError(f"layer {layer.name!r} mixes the input's channels with others: cannot turn the "
                                   "network to RGB input")
        if layer.kind == "conv":
            kernel = params[layer.name]["kernel"]
            if layer.groups == 1:
                params[layer.name]["kernel"] = np.ascontiguousarray(kernel[:, :, ::-1, :])
            elif layer.groups == kernel.shape[-1] == 3:  # depthwise on the input: each channel its own
                params[layer.name] = {k: np.ascontiguousarray(v[..., ::-1]) for k, v in params[layer.name].items()}
                in_input_order.add(layer.output)
            else:
                raise CaffeImportError(f"grouped convolution {layer.name!r} on the input cannot be turned to RGB")
            continue
        if layer.kind in ("affine", "normalize"):
            params[layer.name] = {k: np.ascontiguousarray(v[::-1]) for k, v in params[layer.name].items()}
        in_input_order.add(layer.output)


def network_from_prototxt(net: dict, weights: dict[str, list[np.ndarray]], *,
                          mean_bgr: tuple[float, float, float] | None = None, input_bgr: bool = True,
                          net_name: str | None = None) -> tuple[SSDConfig, dict]:
    """A parsed deploy prototxt and its weights -> (SSDConfig, params) of an ssd_jax SSD, named
    after the prototxt's ``name`` (else ``net_name``)."""
    input_blob, image_size = _input(net)
    if net.get("layers"):
        raise CaffeImportError("the prototxt uses the old V1 'layers' syntax: upgrade it with Caffe's "
                               "upgrade_net_proto_text first")
    layers = [layer for layer in net.get("layer", []) if not _is_test_only_excluded(layer)]
    loc_heads, conf_heads, prior_layers, detection = _trace_heads(layers)
    head_names = {_one(layer, "name") for layer in loc_heads + conf_heads}

    def blobs_of(name: str, want: int) -> list[np.ndarray]:
        found = weights.get(name)
        if not found or len(found) < want:
            raise CaffeImportError(f"layer {name!r}: the caffemodel has {len(found or [])} blobs for it, needs {want}")
        return found

    # --- the base network in order, with blob versions (pass 1) and who reads each version
    graph = _Graph(input_blob)
    head_inputs: dict[str, str] = {}
    steps: list[tuple[dict, tuple[str, ...], str | None]] = []
    readers: Counter = Counter()
    for layer in layers:
        kind, name = _one(layer, "type"), _one(layer, "name")
        bottoms, tops = layer.get("bottom", []), layer.get("top", [])
        if name in head_names:  # the blob as it is at the head's place in the prototxt
            head_inputs[name] = graph.read(_one(layer, "bottom"), name)
            continue
        if kind in _IGNORED or (kind in _HEAD_PLUMBING and kind != "Concat"):
            continue
        if kind == "Concat" and any(bottom not in graph.version for bottom in bottoms):
            continue  # the concatenation of the heads' outputs or of the PriorBoxes
        inputs = tuple(graph.read(bottom, name) for bottom in bottoms)
        if kind in _PASS_THROUGH:
            for top in tops:
                graph.alias(top, inputs[0])
            continue
        if len(tops) != 1:
            raise CaffeImportError(f"layer {name!r} ({kind}) has {len(tops)} tops; one is supported")
        readers.update(inputs)
        steps.append((layer, inputs, graph.write(tops[0])))
    sources = tuple(head_inputs[_one(head, "name")] for head in loc_heads)
    for loc, conf in zip(loc_heads, conf_heads):
        if head_inputs[_one(conf, "name")] != head_inputs[_one(loc, "name")]:
            raise CaffeImportError(f"heads {_one(loc, 'name')!r} and {_one(conf, 'name')!r} read different blobs")
    readers.update(sources)

    # --- layers and parameters (pass 2): BatchNorm and Scale fold into the layer that wrote
    # their input when nothing else reads it
    spec: list[CaffeLayer] = []
    params: dict[str, dict] = {}
    folds_into: dict[str, int] = {}  # blob version -> index in spec of the conv / affine that wrote it
    for layer, inputs, output in steps:
        kind, name = _one(layer, "type"), _one(layer, "name")
        pname = _sanitize(name)
        if kind in ("BatchNorm", "Scale"):
            gain, shift = _affine_of(layer, blobs_of(name, 1), name)
            index = folds_into.pop(inputs[0], None)
            if index is not None and readers[inputs[0]] == 1:
                target = spec[index].name
                first, second = ("kernel", "bias") if spec[index].kind == "conv" else ("gain", "shift")
                params[target] = {first: (params[target][first] * gain).astype(np.float32),
                                  second: (params[target][second] * gain + shift).astype(np.float32)}
                spec[index] = CaffeLayer(**{**spec[index].__dict__, "output": output})
                folds_into[output] = index
                continue
            spec.append(CaffeLayer("affine", pname, inputs, output))
            params[pname] = {"gain": gain.astype(np.float32), "shift": shift.astype(np.float32)}
            folds_into[output] = len(spec) - 1
        elif kind == "Convolution":
            conv_spec, conv_params = _conv_params(layer, blobs_of(name, 1), name)
            spec.append(CaffeLayer("conv", pname, inputs, output, **conv_spec))
            params[pname] = conv_params
            folds_into[output] = len(spec) - 1
        elif kind == "ReLU":
            slope = float(_one(_param(layer, "relu_param"), "negative_slope", 0.0))
            spec.append(CaffeLayer("relu", pname, inputs, output, slope=slope))
        elif kind == "Pooling":
            spec.append(CaffeLayer(name=pname, inputs=inputs, output=output, **_pool_spec(layer, name)))
        elif kind == "Eltwise":
            p = _param(layer, "eltwise_param")
            if _one(p, "operation", "SUM") not in ("SUM", 1) or any(float(c) != 1.0 for c in p.get("coeff", [])):
                raise CaffeImportError(f"Eltwise {name!r}: only a plain SUM is supported")
            spec.append(CaffeLayer("eltwise_sum", pname, inputs, output))
        elif kind == "Normalize":
            p = _param(layer, "norm_param")
            if _one(p, "across_spatial", True) or _one(p, "channel_shared", False):
                raise CaffeImportError(f"Normalize {name!r}: only across_spatial: false, channel_shared: false "
                                       "(SSD's conv4_3_norm) is supported")
            spec.append(CaffeLayer("normalize", pname, inputs, output, eps=float(_one(p, "eps", 1e-10))))
            params[pname] = {"scale": blobs_of(name, 1)[0].reshape(-1).astype(np.float32)}
        elif kind == "Concat":
            if int(_one(_param(layer, "concat_param"), "axis", 1)) != 1:
                raise CaffeImportError(f"Concat {name!r}: only the channel axis is supported")
            spec.append(CaffeLayer("concat", pname, inputs, output))
        else:
            raise CaffeImportError(f"layer {name!r} of type {kind} is not supported (supported: Convolution, "
                                   "BatchNorm, Scale, ReLU, Pooling, Eltwise SUM, Normalize, Concat, Dropout, "
                                   "and SSD's head layers)")

    # --- the network pruned to what the heads need
    needed, kept = set(sources), []
    for layer in reversed(spec):
        if layer.output in needed:
            kept.append(layer)
            needed |= set(layer.inputs)
    spec = kept[::-1]
    params = {layer.name: params[layer.name] for layer in spec if layer.name in params}
    if input_bgr:
        _reverse_input_channels(spec, params, input_blob)

    # --- priors, heads and post-processing
    sizes = configs.caffe_blob_sizes(tuple(spec), input_blob, image_size)
    priors = _prior_settings(prior_layers, image_size, [sizes[s] for s in sources])
    p = _param(detection, "detection_output_param")
    nms = _param(p, "nms_param")
    num_classes = int(_one(p, "num_classes"))
    if int(_one(p, "background_label_id", 0)) != 0 or not _one(p, "share_location", True):
        raise CaffeImportError("DetectionOutput: background_label_id 0 and share_location are required")
    code_type = _one(p, "code_type", "CORNER")  # caffe.proto's default
    if code_type not in ("CENTER_SIZE", 2) or _one(p, "variance_encoded_in_target", False):
        raise CaffeImportError(f"DetectionOutput: code_type {code_type}: only CENTER_SIZE with variances not in the "
                               "target is supported")
    if float(_one(nms, "eta", 1.0)) != 1.0:
        raise CaffeImportError("DetectionOutput: adaptive NMS (eta != 1) is not supported")
    top_k = int(_one(nms, "top_k", -1))
    keep_top_k = int(_one(p, "keep_top_k", -1))
    total_priors = sum(sizes[s] ** 2 * (2 + 2 * len(r)) for s, r in zip(sources, priors["aspect_ratios"]))
    postprocess = (float(_one(p, "confidence_threshold", 0.0)), float(_one(nms, "nms_threshold", 0.3)),
                   top_k if top_k > 0 else total_priors, keep_top_k if keep_top_k > 0 else total_priors)
    for i, (loc, conf) in enumerate(zip(loc_heads, conf_heads)):
        boxes = 2 + 2 * len(priors["aspect_ratios"][i])
        for head, kind, width in ((loc, "loc", 4), (conf, "conf", num_classes)):
            name = _one(head, "name")
            head_spec, head_params = _conv_params(head, blobs_of(name, 1), name)
            if (head_spec["kernel"], head_spec["pad"], head_spec["stride"], head_spec["groups"]) != (3, 1, 1, 1):
                raise CaffeImportError(f"head {name!r}: a 3x3 convolution with pad 1 is expected")
            if head_spec["features"] != boxes * width:
                raise CaffeImportError(f"head {name!r} has {head_spec['features']} outputs; {boxes} boxes x {width} "
                                       "expected from its PriorBox")
            params[f"{kind}_{i}"] = head_params
    prototxt_mean, scale = _transform_of(net)
    mean = tuple(float(m) for m in (mean_bgr if mean_bgr is not None else prototxt_mean or WEILIU89_MEAN_BGR))
    config = SSDConfig(
        name=f"caffe_{_sanitize(str(_one(net, 'name', net_name or 'ssd')))}",
        num_classes=num_classes,
        image_size=image_size,
        feature_map_sizes=tuple(sizes[s] for s in sources),
        backbone="caffe",
        caffe_layers=tuple(spec),
        caffe_input=input_blob,
        caffe_sources=sources,
        clip_boxes=bool(_one(p, "clip", False)),
        mean_rgb=mean[::-1] if input_bgr else mean,
        std_rgb=(1.0 / scale,) * 3 if scale else (1.0, 1.0, 1.0),
        l2norm_scale=None,
        postprocess=postprocess,
        **priors,
    )
    return config, {"backbone": {k: v for k, v in params.items() if not k.startswith(("loc_", "conf_"))},
                    **{k: v for k, v in params.items() if k.startswith(("loc_", "conf_"))}}


def _transform_of(net: dict) -> tuple[tuple[float, float, float] | None, float | None]:
    """The mean (input channel order) and scale of a prototxt's transform_param (data layers of
    training prototxts; deploy prototxts rarely have one): pixels -> (pixels - mean) * scale."""
    for layer in net.get("layer", []):
        transform = _param(layer, "transform_param")
        if transform:
            values = [float(v) for v in transform.get("mean_value", [])]
            mean = (tuple(values * 3)[:3] if len(values) == 1 else tuple(values[:3])) if values else None
            scale = _one(transform, "scale")
            return mean, float(scale) if scale else None
    return None, None


def from_caffe(prototxt: str | os.PathLike, caffemodel: str | os.PathLike, *,
               mean_bgr: tuple[float, float, float] | None = None,
               input_bgr: bool = True) -> tuple[dict, SSDConfig]:
    """A Caffe SSD (deploy prototxt + caffemodel) -> (params, config) for ``ssd_jax.detect``.

    ``mean_bgr``: the mean the model was trained with, in its input's channel order (deploy
    prototxts rarely state it; default: a ``transform_param`` in the prototxt, whose ``scale``
    is read too, else weiliu89's (104, 117, 123)). OpenCV's res10 face detector needs (104, 177,
    123). ``input_bgr=False`` for a model trained on RGB: no channel is reversed. Raises
    ``CaffeImportError`` naming unsupported layers or settings, ``FileNotFoundError`` for
    missing files.
    """
    prototxt = os.fspath(prototxt)
    if not os.path.isfile(prototxt):
        raise FileNotFoundError(f"prototxt not found: {prototxt}")
    with open(prototxt, encoding="utf-8", errors="replace") as f:
        net = parse_prototxt(f.read())
    weights = read_caffemodel(caffemodel)
    stem = os.path.splitext(os.path.basename(os.fspath(caffemodel)))[0]
    config, params = network_from_prototxt(net, weights, mean_bgr=mean_bgr, input_bgr=input_bgr, net_name=stem)
    from ssd_jax.models.ssd import check_params

    check_params(params, config)
    return params, config

