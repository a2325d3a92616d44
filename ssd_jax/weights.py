"""Importing published SSD and VGG16 weights into ssd_jax parameters.

Sources:
  * torchvision's ``ssd300_vgg16`` state dict          -> ``from_torchvision``
  * amdegroot-style VOC checkpoints (``vgg.*``, ``L2Norm.weight``, ``extras.*``, ``loc.*``,
    ``conf.*``; trained on BGR input)                   -> ``from_amdegroot``
  * ImageNet VGG16 features for training, optionally with the reduced fc6/fc7
    (torchvision ``features.*``/``classifier.*`` or bare ``0..33`` keys) -> ``from_vgg16``

State dicts are plain ``{name: numpy array}``; ``load_state_dict`` reads .pth (with
``torch.load(weights_only=True)``, so no code in the file runs), .npz and .safetensors.
Every conversion reports unknown keys, missing keys and shape mismatches by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _convert(state_dict: Mapping, conv_keys: dict[tuple[str, ...], str], scale_keys: dict[tuple[str, ...], str],
             *, flip_first_conv: bool = False) -> tuple[dict, set[str]]:
    """Builds a params subtree from ``{param path: torch key}``; returns it and the keys used."""
    missing = [f"{key}.{part}" for key in conv_keys.values() for part in ("weight", "bias")
               if f"{key}.{part}" not in state_dict]
    missing += [key for key in scale_keys.values() if key not in state_dict]
    if missing:
        raise WeightImportError(f"missing keys in the state dict: {', '.join(missing)}")
    params: dict = {}
    used: set[str] = set()
    for path, key in conv_keys.items():
        flip = flip_first_conv and path[-1] == "conv1_1"
        _set(params, path, _conv(state_dict, key, flip_input_channels=flip))
        used |= {f"{key}.weight", f"{key}.bias"}
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


def _import_ssd(state_dict, config, conv_keys, scale_keys, *, flip_first_conv=False) -> dict:
    params, used = _convert(state_dict, conv_keys, scale_keys, flip_first_conv=flip_first_conv)
    _check_unused(state_dict, used)
    expected = param_shapes(config)
    _check_shapes(params, expected, {**conv_keys, **scale_keys})
    check_params(params, config)  # nothing left unset
    return params


def _num_classes_from_head(state_dict, key: str, boxes: int) -> int:
    if key not in state_dict:
        raise WeightImportError(f"missing key {key}: not an SSD state dict of this kind")
    return int(np.shape(state_dict[key])[0]) // boxes


def torchvision_config(state_dict: Mapping) -> SSDConfig:
    """The ``ssd300_torchvision`` config whose class count fits a torchvision state dict."""
    return configs.ssd300_torchvision(
        _num_classes_from_head(state_dict, "head.classification_head.module_list.0.weight", 4))


def from_torchvision(state_dict: Mapping, config: SSDConfig | None = None) -> dict:
    """torchvision ``ssd300_vgg16`` state dict (name -> array) -> params of ``config``.

    ``config`` defaults to ``torchvision_config(state_dict)`` (91 classes for the COCO model).
    """
    config = torchvision_config(state_dict) if config is None else config
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
