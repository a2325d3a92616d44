"""Importing published SSD and VGG16 weights into ssd_jax parameters.

Sources:
  * torchvision's ``ssd300_vgg16`` state dict          -> ``from_torchvision``
  * amdegroot-style VOC checkpoints (``vgg.*``, ``L2Norm.weight``, ``extras.*``, ``loc.*``,
    ``conf.*``; trained on BGR input)                   -> ``from_amdegroot``
  * Caffe SSD models (deploy prototxt + caffemodel)     -> ``from_caffe`` (``ssd_jax.caffe``)
  * ImageNet VGG16 features for training, optionally with the reduced fc6/fc7
    (torchvision ``features.*``/``classifier.*`` or bare ``0..33`` keys) -> ``from_vgg16``

State dicts are plain ``{name: numpy array}``; ``load_state_dict`` reads .pth (with
``torch.load(weights_only=True)``, so no code in the file runs), .npz and .safetensors.
Every conversion reports unknown keys, missing keys and shape mismatches by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np

from ssd_jax import configs
from ssd_jax.configs import VGG16_BLOCK_DEPTHS, SSDConfig
from ssd_jax.models.ssd import check_params, param_shapes

VGG_CONV_NAMES = tuple(f"conv{block}_{layer}" for block, depth in enumerate(VGG16_BLOCK_DEPTHS, 1)
                       for layer in range(1, depth + 1))
# Position of each conv in torchvision's vgg16().features and in the amdegroot ``vgg`` list.
VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# fc6/fc7 in the amdegroot ``vgg`` list and the reduced-fc ImageNet checkpoint.
REDUCED_FC_INDICES = {"fc6": 31, "fc7": 33}


class WeightImportError(ValueError):
    """A state dict that does not fit the model; the message names every offending key."""


class WeightFileError(ValueError):
    """A weight file that cannot be read: truncated, corrupt, or not a weight file at all."""


# Paragraphs of torch's weights_only errors that surround the one naming the problem.
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _error_summary(error: BaseException) -> str:
    """The informative sentence of a reader's error (torch's weights_only errors bury it in advice)."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(_TORCH_ADVICE)]
    return f"{type(error).__name__}: {lines[0].split('. ')[0]}" if lines else type(error).__name__


def _unreadable(path: str, kind: str, error: Exception) -> WeightFileError:
    if "unsupported global" in str(error).lower():  # a checkpoint that also pickles other Python objects
        hint = ("it pickles Python objects besides tensors, which torch.load(weights_only=True) refuses; if you "
                "trust it, load it in Python and torch.save its state dict alone")
    else:
        hint = "it may be truncated (an interrupted download: compare its size) or not a weight file"
    return WeightFileError(f"{path} is not a readable {kind} weight file ({_error_summary(error)}); {hint}")


def _read_pth(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"reading {path} needs torch: pip install 'ssd_jax[torch]', or convert the "
                          "file to .npz/.safetensors elsewhere") from error
    raw = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
    if not isinstance(raw, Mapping):
        raise WeightFileError(f"{path} holds a {type(raw).__name__}, not a state dict (names -> tensors)")
    return {k: v.detach().float().numpy() for k, v in raw.items() if hasattr(v, "detach")}


def _read_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: np.asarray(archive[k], np.float32) for k in archive.files}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}


_READERS = {".pth": (_read_pth, "PyTorch"), ".pt": (_read_pth, "PyTorch"), ".npz": (_read_npz, "NumPy .npz"),
            ".safetensors": (_read_safetensors, "safetensors")}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a weight file into ``{name: float32 array}`` without executing anything from it.

    .pth/.pt need torch (``torch.load(weights_only=True)``); .npz and .safetensors do not.
    A checkpoint that nests its weights under 'state_dict' or 'model' is unwrapped. Raises
    ``FileNotFoundError`` for a missing file and ``WeightFileError`` for one that cannot be read
    (truncated, corrupt, not a weight file, or pickling objects that weights_only refuses).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _READERS:
        raise ValueError(f"unsupported weight file {path!r}: expected .pth, .pt, .npz or .safetensors")
    reader, kind = _READERS[suffix]
    try:
        return reader(path)
    except (ImportError, WeightFileError, MemoryError):
        raise
    except Exception as error:  # each library fails its own way on a bad file: OSError, EOFError, pickle, zip...
        raise _unreadable(path, kind, error) from error


def _conv(state_dict, key: str, *, flip_input_channels: bool = False) -> dict[str, np.ndarray]:
    """PyTorch conv ``key.weight`` [O, I, H, W] and ``key.bias`` [O] -> Flax {'kernel' HWIO, 'bias'}."""
    weight = np.asarray(state_dict[f"{key}.weight"], np.float32)
    if weight.ndim != 4:
        raise WeightImportError(f"{key}.weight: expected a 4-d conv weight, got shape {weight.shape}")
    if flip_input_channels:
        weight = weight[:, ::-1]
    return {"kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0)),
            "bias": np.asarray(state_dict[f"{key}.bias"], np.float32)}


class ConvBN(NamedTuple):
    """A PyTorch convolution (bias optional) followed by a BatchNorm, folded on import."""

    conv: str
    norm: str


def _conv_bn(state_dict, keys: ConvBN, eps: float) -> dict[str, np.ndarray]:
    """conv [O, I, H, W] (+ bias) and BatchNorm (weight, bias, running mean and var) -> Flax
    {'kernel' HWIO, 'bias'} of the folded convolution: kernel * f, (bias - mean) * f + beta with
    f = weight / sqrt(var + eps). Depthwise weights [C, 1, H, W] become [H, W, 1, C]."""
    weight = np.asarray(state_dict[f"{keys.conv}.weight"], np.float64)
    if weight.ndim != 4:
        raise WeightImportError(f"{keys.conv}.weight: expected a 4-d conv weight, got shape {weight.shape}")
    norm = {part: np.asarray(state_dict[f"{keys.norm}.{part}"], np.float64)
            for part in ("weight", "bias", "running_mean", "running_var")}
    factor = norm["weight"] / np.sqrt(norm["running_var"] + eps)
    bias = np.asarray(state_dict.get(f"{keys.conv}.bias", np.zeros(weight.shape[0])), np.float64)
    return {"kernel": np.ascontiguousarray((weight.transpose(2, 3, 1, 0) * factor).astype(np.float32)),
            "bias": ((bias - norm["running_mean"]) * factor + norm["bias"]).astype(np.float32)}


def _keys_of(entry: str | ConvBN) -> list[str]:
    """The state-dict keys that one ``conv_keys`` entry reads (a BatchNorm's counter included)."""
    if isinstance(entry, ConvBN):
        return [f"{entry.conv}.weight", *(f"{entry.norm}.{part}" for part in ("weight", "bias", "running_mean",
                                                                                "running_var"))]
    return [f"{entry}.weight", f"{entry}.bias"]


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _convert(state_dict: Mapping, conv_keys: dict[tuple[str, ...], str | ConvBN],
             scale_keys: dict[tuple[str, ...], str], *, flip_first_conv: bool = False,
             bn_eps: float = 1e-5) -> tuple[dict, set[str]]:
    """Builds a params subtree from ``{param path: torch key or ConvBN}``; returns it and the keys
    used. ``bn_eps``: the epsilon of the network's BatchNorms (not stored in state dicts)."""
    missing = [key for entry in conv_keys.values() for key in _keys_of(entry) if key not in state_dict]
    missing += [key for key in scale_keys.values() if key not in state_dict]
    if missing:
        shown = ", ".join(missing[:12]) + (f", ... ({len(missing)} in all)" if len(missing) > 12 else "")
        raise WeightImportError(f"missing keys in the state dict: {shown}")
    params: dict = {}
    used: set[str] = set()
    for path, entry in conv_keys.items():
        if isinstance(entry, ConvBN):
            _set(params, path, _conv_bn(state_dict, entry, bn_eps))
            used |= {*_keys_of(entry), f"{entry.conv}.bias", f"{entry.norm}.num_batches_tracked"}
            continue
        flip = flip_first_conv and path[-1] == "conv1_1"
        _set(params, path, _conv(state_dict, entry, flip_input_channels=flip))
        used |= set(_keys_of(entry))
    for path, key in scale_keys.items():
        _set(params, path, {"scale": np.asarray(state_dict[key], np.float32).reshape(-1)})
        used.add(key)
    return params, used


def _check_shapes(params: dict, expected: dict, sources: dict[tuple[str, ...], str]) -> None:
    """Raises naming each imported array whose shape does not fit ``expected`` (a param_shapes tree)."""
    expected_leaves = {tuple(k.key for k in path): leaf.shape
                       for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
    problems = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = tuple(k.key for k in path)
        want = expected_leaves.get(names)
        source = sources.get(names[:-1], "?")
        if want is None:
            problems.append(f"{source} -> {'/'.join(names)}: no such parameter in the model")
        elif tuple(np.shape(leaf)) != tuple(want):
            problems.append(f"{source} ({names[-1]}) -> {'/'.join(names)}: shape {np.shape(leaf)}, "
                            f"the model expects {tuple(want)}")
    if problems:
        raise WeightImportError("shape mismatch: " + "; ".join(problems))


def _check_unused(state_dict: Mapping, used: set[str], *, ignore_prefixes: tuple[str, ...] = ()) -> None:
    unknown = sorted(k for k in state_dict if k not in used and not k.startswith(ignore_prefixes))
    if unknown:
        raise WeightImportError(f"unexpected keys in the state dict: {', '.join(unknown)}")


def _ssd_keys(config: SSDConfig, base: dict[str, str], extra_key, head_key) -> dict[tuple[str, ...], str]:
    keys = {("backbone", name): key for name, key in base.items()}
    for i in range(1, len(config.extras) + 1):
        keys[(f"extra{i}_1",)] = extra_key(i, 1)
        keys[(f"extra{i}_2",)] = extra_key(i, 2)
    for i in range(config.num_sources):
        keys[(f"loc_{i}",)] = head_key("loc", i)
        keys[(f"conf_{i}",)] = head_key("conf", i)
    return keys


def _import_ssd(state_dict, config, conv_keys, scale_keys, *, flip_first_conv=False, bn_eps=1e-5) -> dict:
    params, used = _convert(state_dict, conv_keys, scale_keys, flip_first_conv=flip_first_conv, bn_eps=bn_eps)
    _check_unused(state_dict, used)
    expected = param_shapes(config)
    _check_shapes(params, expected, {**conv_keys, **scale_keys})
    check_params(params, config)  # nothing left unset
    return params


def _num_classes_from_head(state_dict, key: str, boxes: int) -> int:
    if key not in state_dict:
        raise WeightImportError(f"missing key {key}: not an SSD state dict of this kind")
    return int(np.shape(state_dict[key])[0]) // boxes


# torchvision builds SSDLite's BatchNorms with eps 0.001 (its classification MobileNetV3 too).
MOBILENET_BN_EPS = 1e-3
_SSDLITE_KEY = "backbone.features.0.0.0.weight"  # SSDLite's first conv; VGG16's is backbone.features.0.weight


def _conv_norm(key: str) -> ConvBN:
    """torchvision's ``Conv2dNormActivation`` at ``key``: conv ``key.0``, BatchNorm ``key.1``."""
    return ConvBN(f"{key}.0", f"{key}.1")


def _mobilenet_block_keys(index: int, prefix: str, *, expands: bool, squeeze_excite: bool) -> dict[str, str | ConvBN]:
    """Our layer names of MobileNetV3 block ``index`` -> torchvision's keys under ``prefix``
    (an ``InvertedResidual.block``: [expand], depthwise, [squeeze-excitation], project)."""
    names = (["expand"] if expands else []) + ["dw"] + (["se"] if squeeze_excite else []) + ["project"]
    keys: dict[str, str | ConvBN] = {}
    for position, name in enumerate(names):
        if name == "se":
            keys[f"b{index}_se_reduce"] = f"{prefix}.{position}.fc1"
            keys[f"b{index}_se_expand"] = f"{prefix}.{position}.fc2"
        else:
            keys[f"b{index}_{name}"] = _conv_norm(f"{prefix}.{position}")
    return keys


def _mobilenet_keys(config: SSDConfig, *, ssdlite: bool) -> dict[str, str | ConvBN]:
    """Our MobileNetV3-Large layer names -> torchvision's keys: of ``ssdlite320_mobilenet_v3_large``
    (``backbone.features.0`` up to block 13's expansion, ``backbone.features.1`` from its depthwise
    conv on) or of the classifier ``mobilenet_v3_large`` (``features.N``)."""
    from ssd_jax.models.mobilenet_v3 import FIRST_SOURCE_BLOCK, large_blocks

    blocks = large_blocks(config.reduced_tail)
    keys: dict[str, str | ConvBN] = {"stem": _conv_norm("backbone.features.0.0" if ssdlite else "features.0")}
    in_channels = 16
    for i, block in enumerate(blocks, start=1):
        expands = block.expanded != in_channels
        in_channels = block.out
        if not ssdlite:
            keys.update(_mobilenet_block_keys(i, f"features.{i}.block", expands=expands,
                                              squeeze_excite=block.squeeze_excite))
        elif i < FIRST_SOURCE_BLOCK:
            keys.update(_mobilenet_block_keys(i, f"backbone.features.0.{i}.block", expands=expands,
                                              squeeze_excite=block.squeeze_excite))
        elif i == FIRST_SOURCE_BLOCK:  # split after its expansion: the first source
            # torchvision slices the block's Sequential, which keeps the layers' indices (from 1).
            keys.update(_mobilenet_block_keys(i, "backbone.features.1.0", expands=True,
                                              squeeze_excite=block.squeeze_excite))
            keys[f"b{i}_expand"] = _conv_norm(f"backbone.features.0.{i}")
        else:
            keys.update(_mobilenet_block_keys(i, f"backbone.features.1.{i - FIRST_SOURCE_BLOCK}.block",
                                              expands=expands, squeeze_excite=block.squeeze_excite))
    last = len(blocks) + 1
    keys["last"] = _conv_norm(f"backbone.features.1.{last - FIRST_SOURCE_BLOCK}" if ssdlite else f"features.{last}")
    return keys


def _ssdlite_keys(config: SSDConfig) -> dict[tuple[str, ...], str | ConvBN]:
    keys: dict[tuple[str, ...], str | ConvBN] = {("backbone", name): key
                                                 for name, key in _mobilenet_keys(config, ssdlite=True).items()}
    for i in range(1, len(config.extras) + 1):
        for position, name in enumerate(("1", "dw", "2")):
            keys[(f"extra{i}_{name}",)] = _conv_norm(f"backbone.extra.{i - 1}.{position}")
    heads = {"loc": "head.regression_head.module_list", "conf": "head.classification_head.module_list"}
    for i in range(config.num_sources):
        for kind, key in heads.items():
            keys[(f"{kind}_{i}_dw",)] = _conv_norm(f"{key}.{i}.0")
            keys[(f"{kind}_{i}",)] = f"{key}.{i}.1"
    return keys


def torchvision_config(state_dict: Mapping) -> SSDConfig:
    """The config whose layers and class count fit a torchvision SSD state dict:
    ``ssd300_torchvision`` (``ssd300_vgg16``) or ``ssdlite320_mobilenet_v3_large`` (reduced tail
    or not, from the width of its last layer)."""
    if _SSDLITE_KEY in state_dict:
        last = [key for key in state_dict if key.startswith("backbone.features.1.") and key.endswith(".0.weight")]
        width = max((np.shape(state_dict[key])[0] for key in last), default=480)
        return configs.ssdlite320_mobilenet_v3_large(
            _num_classes_from_head(state_dict, "head.classification_head.module_list.0.1.weight", 6),
            reduced_tail=width < 960)
    return configs.ssd300_torchvision(
        _num_classes_from_head(state_dict, "head.classification_head.module_list.0.weight", 4))


def from_torchvision(state_dict: Mapping, config: SSDConfig | None = None) -> dict:
    """torchvision ``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3_large`` state dict (name ->
    array) -> params of ``config``; SSDLite's BatchNorms are folded into its convolutions.

    ``config`` defaults to ``torchvision_config(state_dict)`` (91 classes for the COCO models).
    """
    config = torchvision_config(state_dict) if config is None else config
    if config.backbone == "mobilenet_v3_large":
        return _import_ssd(state_dict, config, _ssdlite_keys(config), {}, bn_eps=MOBILENET_BN_EPS)
    if config.backbone != "vgg16":
        raise WeightImportError(f"torchvision has no SSD with the {config.backbone} backbone of config {config.name!r}")
    base = {name: f"backbone.features.{i}" for name, i in zip(VGG_CONV_NAMES[:10], VGG_CONV_INDICES[:10])}
    base.update({"conv5_1": "backbone.extra.0.1", "conv5_2": "backbone.extra.0.3",
                 "conv5_3": "backbone.extra.0.5", "fc6": "backbone.extra.0.7.1",
                 "fc7": "backbone.extra.0.7.3"})
    heads = {"loc": "head.regression_head.module_list", "conf": "head.classification_head.module_list"}
    conv_keys = _ssd_keys(config, base, lambda i, j: f"backbone.extra.{i}.{0 if j == 1 else 2}",
                          lambda kind, i: f"{heads[kind]}.{i}")
    scale_keys = {("backbone", "conv4_3_norm"): "backbone.scale_weight"}
    return _import_ssd(state_dict, config, conv_keys, scale_keys)


def amdegroot_config(state_dict: Mapping) -> SSDConfig:
    """The ``ssd300`` (VOC sizes) config whose class count fits an amdegroot state dict."""
    return configs.ssd300(_num_classes_from_head(state_dict, "conf.0.weight", 4))


def from_amdegroot(state_dict: Mapping, config: SSDConfig | None = None) -> dict:
    """amdegroot-style VOC checkpoint -> params; conv1_1 is flipped from BGR to RGB input.

    ``config`` defaults to ``ssd300`` with the class count of the checkpoint's heads.
    """
    config = amdegroot_config(state_dict) if config is None else config
    base = {name: f"vgg.{i}" for name, i in zip(VGG_CONV_NAMES, VGG_CONV_INDICES)}
    base.update({name: f"vgg.{i}" for name, i in REDUCED_FC_INDICES.items()})
    conv_keys = _ssd_keys(config, base, lambda i, j: f"extras.{2 * (i - 1) + j - 1}",
                          lambda kind, i: f"{kind}.{i}")
    scale_keys = {("backbone", "conv4_3_norm"): "L2Norm.weight"}
    return _import_ssd(state_dict, config, conv_keys, scale_keys, flip_first_conv=True)


def from_vgg16(state_dict: Mapping, *, bgr: bool = False,
               input_mean: tuple[float, float, float] | None = None,
               input_std: tuple[float, float, float] | None = None,
               model_mean: tuple[float, float, float] = configs.IMAGENET_MEAN_RGB) -> dict:
    """ImageNet VGG16 conv (and reduced fc6/fc7 if present) -> the ``backbone`` params subtree.

    Accepts torchvision's ``vgg16`` keys (``features.N``; its ``classifier.*`` is ignored: it is
    not the reduced fc) and the reduced-fc checkpoints' bare keys (``N``, fc6 = 31, fc7 = 33).

    Our model feeds conv1_1 RGB pixels in [0, 255] minus ``model_mean``. Caffe-converted weights
    already expect that (``bgr=True`` when they were trained on BGR). Weights trained on
    ``(pixels / 255 - input_mean) / input_std`` (torchvision's IMAGENET1K_V1: mean (0.485,
    0.456, 0.406), std (0.229, 0.224, 0.225)) are rescaled into conv1_1, exact except at the
    zero-padded image border.
    """
    prefix = "features." if any(k.startswith("features.") for k in state_dict) else ""
    conv_keys = {("backbone", name): f"{prefix}{i}" for name, i in zip(VGG_CONV_NAMES, VGG_CONV_INDICES)}
    if all(f"{i}.weight" in state_dict for i in REDUCED_FC_INDICES.values()) and not prefix:
        conv_keys.update({("backbone", name): str(i) for name, i in REDUCED_FC_INDICES.items()})
    params, used = _convert(state_dict, conv_keys, {}, flip_first_conv=bgr)
    _check_unused(state_dict, used, ignore_prefixes=("classifier.",))
    if input_std is not None:
        first = params["backbone"]["conv1_1"]
        std = 255.0 * np.asarray(input_std, np.float32)
        mean = 255.0 * np.asarray(input_mean if input_mean is not None else (0.0, 0.0, 0.0), np.float32)
        kernel = first["kernel"] / std[None, None, :, None]
        # The weights expect (pixels - mean); we feed (pixels - model_mean).
        shift = np.asarray(model_mean, np.float32) - mean
        first["bias"] = first["bias"] + np.einsum("hwio,i->o", kernel, shift)
        first["kernel"] = kernel
    return params


def _backbone_import(state_dict: Mapping, conv_keys: dict[str, str | ConvBN], *, ignore: tuple[str, ...],
                     bn_eps: float) -> dict:
    params, used = _convert(state_dict, {("backbone", name): key for name, key in conv_keys.items()}, {},
                            bn_eps=bn_eps)
    _check_unused(state_dict, used, ignore_prefixes=ignore)
    return params


def from_mobilenet_v3_large(state_dict: Mapping) -> dict:
    """torchvision's ImageNet ``mobilenet_v3_large`` (``features.*``; the classifier is ignored)
    -> the ``backbone`` params subtree of ``ssdlite320_mobilenet_v3_large_full``, BatchNorms folded.

    Used as torchvision uses it for SSDLite: the input normalisation stays SSDLite's.
    """
    config = configs.ssdlite320_mobilenet_v3_large(reduced_tail=False)
    return _backbone_import(state_dict, _mobilenet_keys(config, ssdlite=False), ignore=("classifier.",),
                            bn_eps=MOBILENET_BN_EPS)


def from_resnet50(state_dict: Mapping) -> dict:
    """torchvision's ImageNet ``resnet50`` -> the ``backbone`` params subtree of ``ssd300_resnet50``
    (conv1 .. conv4_x, BatchNorms folded; ``layer4`` and ``fc`` are not part of it)."""
    from ssd_jax.models.resnet import RESNET50_LAYERS

    keys: dict[str, str | ConvBN] = {"conv1": ConvBN("conv1", "bn1")}
    for layer, (blocks, _, _) in enumerate(RESNET50_LAYERS, start=1):
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            for k in (1, 2, 3):
                keys[f"layer{layer}_{block}_conv{k}"] = ConvBN(f"{prefix}.conv{k}", f"{prefix}.bn{k}")
            if block == 0:
                keys[f"layer{layer}_0_downsample"] = ConvBN(f"{prefix}.downsample.0", f"{prefix}.downsample.1")
    return _backbone_import(state_dict, keys, ignore=("layer4.", "fc."), bn_eps=1e-5)


def from_caffe(prototxt: str | os.PathLike, caffemodel: str | os.PathLike, *,
               mean_bgr: tuple[float, float, float] | None = None, input_bgr: bool = True) -> tuple[dict, SSDConfig]:
    """A Caffe SSD (deploy prototxt + caffemodel, e.g. weiliu89's VGG16 SSDs or OpenCV's res10
    face detector) -> (params, config); see ``ssd_jax.caffe.from_caffe`` for the options. Needs
    no Caffe and runs no code."""
    from ssd_jax import caffe

    return caffe.from_caffe(prototxt, caffemodel, mean_bgr=mean_bgr, input_bgr=input_bgr)


def merge_backbone(params: dict, backbone: dict) -> dict:
    """Replaces the arrays of ``params['backbone']`` present in ``backbone['backbone']``.

    For a fresh ``ssd_jax.init`` plus ``from_vgg16``: extras, heads and the L2Norm scale keep
    their initialisation. Shapes must agree (a narrow config cannot take VGG16 weights).
    """
    expected = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.float32), params)
    _check_shapes(backbone, expected, {})
    merged = jax.tree.map(lambda a: a, params)  # a new tree: do not mutate the caller's
    for name, layer in backbone["backbone"].items():
        merged["backbone"][name] = {k: np.asarray(v) for k, v in layer.items()}
    return merged


# Layouts of published SSD weights that ``load_detector`` reads, besides ssd_jax's own checkpoints.
SSD_WEIGHT_FORMATS = ("torchvision", "amdegroot", "caffe")


def load_detector(*, checkpoint: str | None = None, weights: str | None = None, format: str = "torchvision",
                  prototxt: str | None = None, mean_bgr: tuple[float, float, float] | None = None
                  ) -> tuple[dict, SSDConfig, dict]:
    """A detector from an ssd_jax ``checkpoint`` directory or from published ``weights`` of a
    ``format`` of ``SSD_WEIGHT_FORMATS`` (Caffe: ``weights`` is the caffemodel, with its
    ``prototxt``) -> (params, config, metadata: 'class_names' and 'category_ids' where known).

    Raises ``FileNotFoundError``, ``ValueError`` (an unreadable or unfitting file) or
    ``ImportError`` (torch needed for .pth), each naming the problem.
    """
    from ssd_jax import checkpoint as checkpoint_lib
    from ssd_jax import classes

    if (checkpoint is None) == (weights is None):
        raise ValueError("give exactly one of a checkpoint directory or a weight file")
    if checkpoint is not None:
        params, config = checkpoint_lib.load_params(checkpoint)
        return params, config, checkpoint_lib.load_metadata(checkpoint)
    if format not in SSD_WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {format!r}; choose one of {list(SSD_WEIGHT_FORMATS)}")
    if format == "caffe":
        if not prototxt:
            raise ValueError("Caffe weights need their deploy prototxt (--prototxt=FILE) besides the caffemodel")
        params, config = from_caffe(prototxt, weights, mean_bgr=mean_bgr)
        return params, config, {}
    state_dict = load_state_dict(weights)
    if format == "torchvision":
        params, config = from_torchvision(state_dict), torchvision_config(state_dict)
    else:
        params, config = from_amdegroot(state_dict), amdegroot_config(state_dict)
    return params, config, {"class_names": classes.names_for_class_count(config.num_classes)}
