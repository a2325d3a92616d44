"""Importing published SSDs into ssd_jax: one function per project, from its files to
(params, config), its own notions kept here, not in ``SSDConfig``.

  * torchvision's ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large`` -> ``from_torchvision``
  * amdegroot-style VOC checkpoints (``vgg.*``, ``L2Norm.weight``, ``extras.*``, ``loc.*``,
    ``conf.*``; trained on BGR input)                             -> ``from_amdegroot``
  * NVIDIA DeepLearningExamples' SSD300 on ResNet-50 (their ``main.py`` checkpoints and torch
    hub's ``nvidia_ssd``: ``feature_extractor.*``, ``additional_blocks.*``, ``loc.*``,
    ``conf.*``)                                                   -> ``from_nvidia``
  * Caffe SSD models (deploy prototxt + caffemodel)               -> ``from_caffe`` (``ssd_jax.caffe``)

``SSD_FORMATS`` lists them for the command lines; ``load_detector`` loads a detector from any of
them or from an ssd_jax checkpoint. A base network's ImageNet weights are its own module's
(``config.base_network.imagenet_import``; ``from_vgg16``, ``from_resnet50`` and
``from_mobilenet_v3_large`` name them here); ``merge_backbone`` puts them into fresh parameters.
Reading weight files and the shared conversions: ``ssd_jax.state_dicts`` (``.pth`` is read with
``torch.load(weights_only=True)``: no code in the file runs).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
import numpy as np

from ssd_jax import configs, state_dicts
from ssd_jax.configs import SSDConfig
from ssd_jax.models import mobilenet_v3, resnet, vgg
from ssd_jax.models.ssd import check_params, param_shapes
from ssd_jax.state_dicts import ConvBN, WeightFileError, WeightImportError, load_state_dict

__all__ = ["SSD_FORMATS", "STATE_DICT_IMPORTS", "WeightFileError", "WeightImportError", "amdegroot_config",
           "from_amdegroot", "from_caffe",
           "from_mobilenet_v3_large", "from_nvidia", "from_resnet50", "from_torchvision", "from_vgg16",
           "load_detector", "load_state_dict", "merge_backbone", "nvidia_config", "torchvision_config"]

# The ImageNet imports of the built-in base networks, by the names users know them by.
from_vgg16 = vgg.from_imagenet
from_resnet50 = resnet.from_imagenet
from_mobilenet_v3_large = mobilenet_v3.from_imagenet


def _ssd_keys(config: SSDConfig, base: dict[str, str], extra_key, head_key) -> dict[tuple[str, ...], str]:
    keys = {("backbone", name): key for name, key in base.items()}
    for i in range(1, len(config.extras) + 1):
        keys[(f"extra{i}_1",)] = extra_key(i, 1)
        keys[(f"extra{i}_2",)] = extra_key(i, 2)
    for i in range(config.num_sources):
        keys[(f"loc_{i}",)] = head_key("loc", i)
        keys[(f"conf_{i}",)] = head_key("conf", i)
    return keys


def _import_ssd(state_dict, config, conv_keys, scale_keys=None, *, bgr_input_layer=None, bn_eps=1e-5) -> dict:
    params, used = state_dicts.convert(state_dict, conv_keys, scale_keys, bgr_input_layer=bgr_input_layer,
                                       bn_eps=bn_eps)
    state_dicts.check_unused(state_dict, used)
    state_dicts.check_shapes(params, param_shapes(config), {**conv_keys, **(scale_keys or {})})
    check_params(params, config)  # nothing left unset
    return params


def _num_classes_from_head(state_dict, key: str, boxes: int) -> int:
    if key not in state_dict:
        raise WeightImportError(f"missing key {key}: not an SSD state dict of this kind")
    return int(np.shape(state_dict[key])[0]) // boxes


# ----------------------------------------------------------------------------- torchvision
_SSDLITE_KEY = "backbone.features.0.0.0.weight"  # SSDLite's first conv; VGG16's is backbone.features.0.weight
_TORCHVISION_HEADS = {"loc": "head.regression_head.module_list", "conf": "head.classification_head.module_list"}


def _ssdlite_keys(config: SSDConfig) -> dict[tuple[str, ...], str | ConvBN]:
    keys: dict[tuple[str, ...], str | ConvBN] = {
        ("backbone", name): key for name, key in mobilenet_v3.torchvision_keys(config.backbone, ssdlite=True).items()}
    for i in range(1, len(config.extras) + 1):
        for position, name in enumerate(("1", "dw", "2")):
            keys[(f"extra{i}_{name}",)] = mobilenet_v3.conv_norm(f"backbone.extra.{i - 1}.{position}")
    for i in range(config.num_sources):
        for kind, key in _TORCHVISION_HEADS.items():
            keys[(f"{kind}_{i}_dw",)] = mobilenet_v3.conv_norm(f"{key}.{i}.0")
            keys[(f"{kind}_{i}",)] = f"{key}.{i}.1"
    return keys


def _ssd300_vgg16_keys(config: SSDConfig) -> dict[tuple[str, ...], str]:
    base = {name: f"backbone.features.{i}" for name, i in zip(vgg.VGG_CONV_NAMES[:10], vgg.VGG_CONV_INDICES[:10])}
    base.update({"conv5_1": "backbone.extra.0.1", "conv5_2": "backbone.extra.0.3", "conv5_3": "backbone.extra.0.5",
                 "fc6": "backbone.extra.0.7.1", "fc7": "backbone.extra.0.7.3"})
    return _ssd_keys(config, base, lambda i, j: f"backbone.extra.{i}.{0 if j == 1 else 2}",
                     lambda kind, i: f"{_TORCHVISION_HEADS[kind]}.{i}")


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
    if isinstance(config.backbone, mobilenet_v3.MobileNetV3Settings):
        return _import_ssd(state_dict, config, _ssdlite_keys(config), bn_eps=mobilenet_v3.BN_EPS)
    if not isinstance(config.backbone, vgg.VGG16Settings):
        raise WeightImportError(f"torchvision has no SSD on the {config.base_network.kind} base network of config "
                                f"{config.name!r}")
    return _import_ssd(state_dict, config, _ssd300_vgg16_keys(config),
                       {("backbone", "conv4_3_norm"): "backbone.scale_weight"})


# ----------------------------------------------------------------------------- amdegroot
def amdegroot_config(state_dict: Mapping) -> SSDConfig:
    """``ssd300`` (the VOC sizes) as amdegroot's code runs it, with the class count of the state
    dict: its ``PriorBox`` clamps all four of (cx, cy, w, h) (the voc config's ``clip``), its
    ``Detect`` keeps per class the scores above 0.01 and NMS at 0.45 over the best 200 (every
    class's survivors kept), and its boxes are not clipped to the image."""
    num_classes = _num_classes_from_head(state_dict, "conf.0.weight", 4)
    return dataclasses.replace(
        configs.ssd300(num_classes), name="ssd300_amdegroot", prior_clip="all", clip_boxes=False,
        postprocess=configs.PostprocessOptions(score_threshold=0.01, iou_threshold=0.45, pre_nms_top_k=200,
                                               max_detections=200 * (num_classes - 1)))


def from_amdegroot(state_dict: Mapping, config: SSDConfig | None = None) -> dict:
    """amdegroot-style VOC checkpoint -> params; conv1_1 is flipped from BGR to RGB input.

    ``config`` defaults to ``amdegroot_config(state_dict)``.
    """
    config = amdegroot_config(state_dict) if config is None else config
    base = {name: f"vgg.{i}" for name, i in zip(vgg.VGG_CONV_NAMES, vgg.VGG_CONV_INDICES)}
    base.update({name: f"vgg.{i}" for name, i in vgg.REDUCED_FC_INDICES.items()})
    conv_keys = _ssd_keys(config, base, lambda i, j: f"extras.{2 * (i - 1) + j - 1}", lambda kind, i: f"{kind}.{i}")
    return _import_ssd(state_dict, config, conv_keys, {("backbone", "conv4_3_norm"): "L2Norm.weight"},
                       bgr_input_layer=("backbone", "conv1_1"))


# ----------------------------------------------------------------------------- NVIDIA
_NVIDIA_BACKBONE = "feature_extractor.feature_extractor"


def _unprefixed(state_dict: Mapping, prefix: str = "module.") -> dict:
    """Drops the prefix that a DistributedDataParallel model writes before every key."""
    return {key.removeprefix(prefix): value for key, value in state_dict.items()}


def nvidia_config(state_dict: Mapping) -> SSDConfig:
    """``ssd300_resnet50`` with the class count of an NVIDIA SSD300 state dict (81 for COCO)."""
    return configs.ssd300_resnet50(_num_classes_from_head(_unprefixed(state_dict), "conf.0.weight", 4))


def _box_major_to_ours(kernel_and_bias: dict, boxes: int, values: int) -> dict:
    """NVIDIA's heads lay out their channels value-major (``view(N, values, -1)`` reads channel
    ``value * boxes + box``); ours are box-major (``box * values + value``). Both pair a channel
    with the same default box, so reordering the output channels is all it takes."""
    ours = np.arange(boxes * values)
    theirs = (ours % values) * boxes + ours // values
    return {"kernel": np.ascontiguousarray(kernel_and_bias["kernel"][..., theirs]),
            "bias": kernel_and_bias["bias"][theirs]}


def from_nvidia(state_dict: Mapping, config: SSDConfig | None = None) -> dict:
    """NVIDIA DeepLearningExamples' ``SSD300`` state dict (their ``main.py`` checkpoint's 'model'
    entry or torch hub's ``nvidia_ssd``; a ``module.`` prefix is dropped) -> params of
    ``ssd300_resnet50``; BatchNorms are folded into the convolutions.

    ``config`` defaults to ``nvidia_config(state_dict)``.
    """
    state_dict = _unprefixed(state_dict)
    config = nvidia_config(state_dict) if config is None else config
    if not isinstance(config.backbone, resnet.ResNet50Settings):
        raise WeightImportError(f"NVIDIA's SSD300 is on ResNet-50; config {config.name!r} is on "
                                f"{config.base_network.kind}")
    stages = tuple(f"{_NVIDIA_BACKBONE}.{i}" for i in (4, 5, 6))
    keys: dict[tuple[str, ...], str | ConvBN] = {
        ("backbone", name): key for name, key in
        resnet.torchvision_keys(stem=(f"{_NVIDIA_BACKBONE}.0", f"{_NVIDIA_BACKBONE}.1"), layers=stages).items()}
    for i in range(1, len(config.extras) + 1):
        keys[(f"extra{i}_1",)] = ConvBN(f"additional_blocks.{i - 1}.0", f"additional_blocks.{i - 1}.1")
        keys[(f"extra{i}_2",)] = ConvBN(f"additional_blocks.{i - 1}.3", f"additional_blocks.{i - 1}.4")
    for i in range(config.num_sources):
        keys[(f"loc_{i}",)] = f"loc.{i}"
        keys[(f"conf_{i}",)] = f"conf.{i}"
    params = _import_ssd(state_dict, config, keys)
    for i, boxes in enumerate(config.boxes_per_location):
        params[f"loc_{i}"] = _box_major_to_ours(params[f"loc_{i}"], boxes, 4)
        params[f"conf_{i}"] = _box_major_to_ours(params[f"conf_{i}"], boxes, config.num_classes)
    return params


# ----------------------------------------------------------------------------- Caffe
def from_caffe(prototxt: str | os.PathLike, caffemodel: str | os.PathLike, *,
               mean_bgr: tuple[float, float, float] | None = None, input_bgr: bool = True) -> tuple[dict, SSDConfig]:
    """A Caffe SSD (deploy prototxt + caffemodel, e.g. weiliu89's VGG16 SSDs or OpenCV's res10
    face detector) -> (params, config); see ``ssd_jax.caffe.from_caffe`` for the options. Needs
    no Caffe and runs no code."""
    from ssd_jax import caffe

    return caffe.from_caffe(prototxt, caffemodel, mean_bgr=mean_bgr, input_bgr=input_bgr)


# ----------------------------------------------------------------------------- one entry for all
# Layouts of published SSD weights that load_detector and the command lines read.
SSD_FORMATS = ("torchvision", "amdegroot", "nvidia", "caffe")
# Those read from a state dict: format -> (import, the config it fits by default).
STATE_DICT_IMPORTS = {"torchvision": (from_torchvision, torchvision_config),
                      "amdegroot": (from_amdegroot, amdegroot_config),
                      "nvidia": (from_nvidia, nvidia_config)}


def load_ssd(weights: str, format: str, *, prototxt: str | None = None,
             mean_bgr: tuple[float, float, float] | None = None) -> tuple[dict, SSDConfig]:
    """Published SSD weights of ``format`` (one of ``SSD_FORMATS``; Caffe: ``weights`` is the
    caffemodel, with its ``prototxt``) -> (params, config)."""
    if format not in SSD_FORMATS:
        raise ValueError(f"unknown weight format {format!r}; choose one of {list(SSD_FORMATS)}")
    if format == "caffe":
        if not prototxt:
            raise ValueError("Caffe weights need their deploy prototxt (--prototxt=FILE) besides the caffemodel")
        return from_caffe(prototxt, weights, mean_bgr=mean_bgr)
    state_dict = load_state_dict(weights)
    importer, config_of = STATE_DICT_IMPORTS[format]
    config = config_of(state_dict)
    return importer(state_dict, config), config


def load_detector(*, checkpoint: str | None = None, weights: str | None = None, format: str = "torchvision",
                  prototxt: str | None = None, mean_bgr: tuple[float, float, float] | None = None
                  ) -> tuple[dict, SSDConfig, dict]:
    """A detector from an ssd_jax ``checkpoint`` directory or from published ``weights`` of a
    ``format`` of ``SSD_FORMATS`` -> (params, config, metadata: 'class_names' and 'category_ids'
    where known).

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
    params, config = load_ssd(weights, format, prototxt=prototxt, mean_bgr=mean_bgr)
    names = None if format == "caffe" else classes.names_for_class_count(config.num_classes)
    return params, config, {"class_names": names}


def merge_backbone(params: dict, backbone: dict) -> dict:
    """Replaces the arrays of ``params['backbone']`` present in ``backbone['backbone']``.

    For a fresh ``ssd_jax.init`` plus an ImageNet import: extras, heads and the L2Norm scale keep
    their initialisation. Shapes must agree (a narrow config cannot take VGG16 weights).
    """
    expected = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.float32), params)
    state_dicts.check_shapes(backbone, expected, {})
    merged = jax.tree.map(lambda a: a, params)  # a new tree: do not mutate the caller's
    for name, layer in backbone["backbone"].items():
        merged["backbone"][name] = {k: np.asarray(v) for k, v in layer.items()}
    return merged
