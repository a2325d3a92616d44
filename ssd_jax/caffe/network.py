"""The base network of a Caffe deploy prototxt as ssd_jax layers (``CaffeLayer``) and parameters:
the layers in Caffe's order with blob versions (a blob written in place gets a new one),
BatchNorm and Scale folded into the layer that wrote their input when nothing else reads it,
the network pruned to what the heads read, and its first layers turned from BGR to RGB."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from ssd_jax.caffe.heads import HEAD_PLUMBING
from ssd_jax.caffe.prototxt import CaffeImportError, one, param, size
from ssd_jax.models.caffe_net import CaffeLayer

PASS_THROUGH = ("Dropout", "Split")
IGNORED = ("Input", "Data", "AnnotatedData", "MultiBoxLoss", "Accuracy", "SoftmaxWithLoss", "Silence")


def sanitize(name: str) -> str:
    """A Caffe layer name as a parameter name: characters other than letters, digits and _ become _."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def input_of(net: dict) -> tuple[str, int]:
    """The data blob's name and (square) size, from input/input_shape/input_dim or an Input layer."""
    name, dims = one(net, "input"), None
    if name is not None:
        shape = one(net, "input_shape")
        dims = shape["dim"] if shape else net.get("input_dim")
    else:
        for layer in net.get("layer", []):
            if one(layer, "type") == "Input":
                name = one(layer, "top")
                dims = param(param(layer, "input_param"), "shape").get("dim")
                break
    if name is None or not dims or len(dims) != 4:
        raise CaffeImportError("the prototxt declares no 4-d input (input + input_shape, input_dim, or an Input "
                               "layer): is it a deploy prototxt?")
    if dims[1] != 3 or dims[2] != dims[3]:
        raise CaffeImportError(f"input {name!r} has shape {dims}: ssd_jax needs 3 channels and a square image")
    return name, int(dims[2])


class BlobVersions:
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


def conv_params(layer: dict, blobs: list[np.ndarray], name: str) -> tuple[dict, dict]:
    p = param(layer, "convolution_param")
    weight = blobs[0]
    out = int(one(p, "num_output"))
    groups = int(one(p, "group", 1))
    if weight.ndim != 4 or weight.shape[0] != out:
        raise CaffeImportError(f"Convolution {name!r}: weight of shape {weight.shape} for num_output {out}")
    bias = blobs[1].reshape(-1) if one(p, "bias_term", True) and len(blobs) > 1 else np.zeros(out, np.float32)
    spec = {"features": out, "kernel": size(p, "kernel_size", 1), "stride": size(p, "stride", 1),
            "pad": size(p, "pad", 0), "dilation": size(p, "dilation", 1), "groups": groups}
    return spec, {"kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)), "bias": bias.astype(np.float32)}


def affine_of(layer: dict, blobs: list[np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm (mean, variance, moving-average factor) or Scale (gamma, beta) -> (gain, shift)."""
    kind = one(layer, "type")
    if kind == "BatchNorm":
        if len(blobs) < 2:
            raise CaffeImportError(f"BatchNorm {name!r} has {len(blobs)} blobs, expected mean, variance, factor")
        factor = float(blobs[2].reshape(-1)[0]) if len(blobs) > 2 else 1.0
        factor = 1.0 / factor if factor != 0 else 0.0
        mean, variance = blobs[0].reshape(-1) * factor, blobs[1].reshape(-1) * factor
        eps = float(one(param(layer, "batch_norm_param"), "eps", 1e-5))
        gain = 1.0 / np.sqrt(variance.astype(np.float64) + eps)
        return gain, -mean * gain
    p = param(layer, "scale_param")
    if len(layer.get("bottom", [])) != 1 or int(one(p, "axis", 1)) != 1:
        raise CaffeImportError(f"Scale {name!r}: only a learned per-channel scale (one bottom, axis 1) is supported")
    gain = blobs[0].reshape(-1).astype(np.float64)
    shift = blobs[1].reshape(-1).astype(np.float64) if one(p, "bias_term", False) and len(blobs) > 1 else 0 * gain
    return gain, shift


def pool_spec(layer: dict, name: str) -> dict:
    p = param(layer, "pooling_param")
    method = one(p, "pool", "MAX")
    kinds = {"MAX": "max_pool", 0: "max_pool", "AVE": "avg_pool", 1: "avg_pool"}
    if method not in kinds:
        raise CaffeImportError(f"Pooling {name!r}: pool {method} is not supported (MAX, AVE)")
    if one(p, "global_pooling", False):
        return {"kind": kinds[method], "kernel": 0, "stride": 1, "pad": 0}
    if one(p, "round_mode", "CEIL") not in ("CEIL", 0):
        raise CaffeImportError(f"Pooling {name!r}: round_mode {one(p, 'round_mode')} is not supported (CEIL)")
    return {"kind": kinds[method], "kernel": size(p, "kernel_size", 1), "stride": size(p, "stride", 1),
            "pad": size(p, "pad", 0)}


def is_test_only_excluded(layer: dict) -> bool:
    """Layers that the TEST phase leaves out (include { phase: TRAIN } or exclude { phase: TEST })."""
    included = [one(rule, "phase") for rule in layer.get("include", [])]
    excluded = [one(rule, "phase") for rule in layer.get("exclude", [])]
    return (bool(included) and all(phase in ("TRAIN", 0) for phase in included)) or any(
        phase in ("TEST", 1) for phase in excluded)


def reverse_input_channels(layers: list[CaffeLayer], params: dict, input_blob: str) -> None:
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


def base_layers(layers: list[dict], head_names: set[str], input_blob: str):
    """Pass 1: the base network's layers in order, each with the blob versions it reads and the
    one it writes -> (steps [(layer, inputs, output)], {head name: the blob version it reads},
    how many layers read each version)."""
    graph = BlobVersions(input_blob)
    head_inputs: dict[str, str] = {}
    steps: list[tuple[dict, tuple[str, ...], str]] = []
    readers: Counter = Counter()
    for layer in layers:
        kind, name = one(layer, "type"), one(layer, "name")
        bottoms, tops = layer.get("bottom", []), layer.get("top", [])
        if name in head_names:  # the blob as it is at the head's place in the prototxt
            head_inputs[name] = graph.read(one(layer, "bottom"), name)
            continue
        if kind in IGNORED or (kind in HEAD_PLUMBING and kind != "Concat"):
            continue
        if kind == "Concat" and any(bottom not in graph.version for bottom in bottoms):
            continue  # the concatenation of the heads' outputs or of the PriorBoxes
        inputs = tuple(graph.read(bottom, name) for bottom in bottoms)
        if kind in PASS_THROUGH:
            for top in tops:
                graph.alias(top, inputs[0])
            continue
        if len(tops) != 1:
            raise CaffeImportError(f"layer {name!r} ({kind}) has {len(tops)} tops; one is supported")
        readers.update(inputs)
        steps.append((layer, inputs, graph.write(tops[0])))
    return steps, head_inputs, readers


def _plain_layer(layer: dict, kind: str, name: str, inputs, output, blobs_of) -> tuple[CaffeLayer, dict | None]:
    """One layer that does not fold: (its CaffeLayer, its parameters or None)."""
    pname = sanitize(name)
    if kind == "Convolution":
        conv_spec, conv_params_ = conv_params(layer, blobs_of(name, 1), name)
        return CaffeLayer("conv", pname, inputs, output, **conv_spec), conv_params_
    if kind == "ReLU":
        slope = float(one(param(layer, "relu_param"), "negative_slope", 0.0))
        return CaffeLayer("relu", pname, inputs, output, slope=slope), None
    if kind == "Pooling":
        return CaffeLayer(name=pname, inputs=inputs, output=output, **pool_spec(layer, name)), None
    if kind == "Eltwise":
        p = param(layer, "eltwise_param")
        if one(p, "operation", "SUM") not in ("SUM", 1) or any(float(c) != 1.0 for c in p.get("coeff", [])):
            raise CaffeImportError(f"Eltwise {name!r}: only a plain SUM is supported")
        return CaffeLayer("eltwise_sum", pname, inputs, output), None
    if kind == "Normalize":
        p = param(layer, "norm_param")
        if one(p, "across_spatial", True) or one(p, "channel_shared", False):
            raise CaffeImportError(f"Normalize {name!r}: only across_spatial: false, channel_shared: false "
                                   "(SSD's conv4_3_norm) is supported")
        return (CaffeLayer("normalize", pname, inputs, output, eps=float(one(p, "eps", 1e-10))),
                {"scale": blobs_of(name, 1)[0].reshape(-1).astype(np.float32)})
    if kind == "Concat":
        if int(one(param(layer, "concat_param"), "axis", 1)) != 1:
            raise CaffeImportError(f"Concat {name!r}: only the channel axis is supported")
        return CaffeLayer("concat", pname, inputs, output), None
    raise CaffeImportError(f"layer {name!r} of type {kind} is not supported (supported: Convolution, BatchNorm, "
                           "Scale, ReLU, Pooling, Eltwise SUM, Normalize, Concat, Dropout, and SSD's head layers)")


def layers_and_params(steps, readers: Counter, blobs_of) -> tuple[list[CaffeLayer], dict[str, dict]]:
    """Pass 2: the ssd_jax layers and their parameters. BatchNorm and Scale fold into the layer that
    wrote their input (a convolution, or an affine layer of earlier ones) when nothing else reads
    it; otherwise they are an affine layer of their own."""
    spec: list[CaffeLayer] = []
    params: dict[str, dict] = {}
    folds_into: dict[str, int] = {}  # blob version -> index in spec of the conv / affine that wrote it
    for layer, inputs, output in steps:
        kind, name = one(layer, "type"), one(layer, "name")
        if kind in ("BatchNorm", "Scale"):
            gain, shift = affine_of(layer, blobs_of(name, 1), name)
            index = folds_into.pop(inputs[0], None)
            if index is not None and readers[inputs[0]] == 1:
                target = spec[index].name
                first, second = ("kernel", "bias") if spec[index].kind == "conv" else ("gain", "shift")
                params[target] = {first: (params[target][first] * gain).astype(np.float32),
                                  second: (params[target][second] * gain + shift).astype(np.float32)}
                spec[index] = CaffeLayer(**{**spec[index].__dict__, "output": output})
                folds_into[output] = index
                continue
            spec.append(CaffeLayer("affine", sanitize(name), inputs, output))
            params[sanitize(name)] = {"gain": gain.astype(np.float32), "shift": shift.astype(np.float32)}
            folds_into[output] = len(spec) - 1
            continue
        caffe_layer, layer_params = _plain_layer(layer, kind, name, inputs, output, blobs_of)
        spec.append(caffe_layer)
        if layer_params is not None:
            params[caffe_layer.name] = layer_params
        if kind == "Convolution":
            folds_into[output] = len(spec) - 1
    return spec, params


def pruned(spec: list[CaffeLayer], params: dict, sources: tuple[str, ...]) -> tuple[list[CaffeLayer], dict]:
    """The layers (and their parameters) that the blobs ``sources`` depend on."""
    needed, kept = set(sources), []
    for layer in reversed(spec):
        if layer.output in needed:
            kept.append(layer)
            needed |= set(layer.inputs)
    kept = kept[::-1]
    return kept, {layer.name: params[layer.name] for layer in kept if layer.name in params}
