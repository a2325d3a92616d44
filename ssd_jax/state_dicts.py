"""Reading other projects' weight files, and the conversions every importer shares.

A state dict is a plain ``{name: numpy array}``. ``load_state_dict`` reads .pth (with
``torch.load(weights_only=True)``, so no code in the file runs), .npz and .safetensors.
``convert`` builds a parameter subtree from a table {our parameter path: their key} (a
convolution, or a ``ConvBN``: a convolution and the BatchNorm folded into it); ``check_shapes``
and ``check_unused`` report every missing, unknown or misshapen key by name. The importers of
whole SSDs (``ssd_jax.weights``) and of ImageNet base networks (each network's module) are made
of these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np


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


def convert(state_dict: Mapping, conv_keys: dict[tuple[str, ...], str | ConvBN],
            scale_keys: dict[tuple[str, ...], str] | None = None, *, bgr_input_layer: tuple[str, ...] | None = None,
            bn_eps: float = 1e-5) -> tuple[dict, set[str]]:
    """Builds a params subtree from ``{param path: torch key or ConvBN}`` (and L2Norm-like
    ``{param path: key of a per-channel scale}``); returns it and the keys used.

    ``bgr_input_layer``: the path of the convolution that reads the image, when the weights were
    trained on BGR input: its input channels are reversed, so that it reads RGB. ``bn_eps``: the
    epsilon of the network's BatchNorms (not stored in state dicts)."""
    scale_keys = scale_keys or {}
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
        _set(params, path, _conv(state_dict, entry, flip_input_channels=path == bgr_input_layer))
        used |= set(_keys_of(entry))
    for path, key in scale_keys.items():
        _set(params, path, {"scale": np.asarray(state_dict[key], np.float32).reshape(-1)})
        used.add(key)
    return params, used


def check_shapes(params: dict, expected: dict, sources: dict[tuple[str, ...], str]) -> None:
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


def check_unused(state_dict: Mapping, used: set[str], *, ignore_prefixes: tuple[str, ...] = ()) -> None:
    unknown = sorted(k for k in state_dict if k not in used and not k.startswith(ignore_prefixes))
    if unknown:
        raise WeightImportError(f"unexpected keys in the state dict: {', '.join(unknown)}")


def import_backbone(state_dict: Mapping, conv_keys: dict[str, str | ConvBN], *, ignore: tuple[str, ...] = (),
                    bn_eps: float = 1e-5, bgr_input_layer: str | None = None) -> dict:
    """{our backbone layer name: their key} -> the ``backbone`` parameter subtree; keys starting
    with one of ``ignore`` (a classifier's head) may be left over, any other is an error.
    ``bgr_input_layer``: our name of the layer that reads a BGR-trained image (see ``convert``)."""
    params, used = convert(state_dict, {("backbone", name): key for name, key in conv_keys.items()}, bn_eps=bn_eps,
                           bgr_input_layer=("backbone", bgr_input_layer) if bgr_input_layer else None)
    check_unused(state_dict, used, ignore_prefixes=ignore)
    return params
