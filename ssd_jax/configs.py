"""Model configurations: frozen, hashable ``SSDConfig`` and the presets.

A config fixes everything that shapes the compiled program: the input size, the base network
and its settings, the extra layers, the default boxes and the box-coding conventions. Being
frozen and hashable, it can be passed to ``jax.jit`` as a static argument and used as a cache
key. What is particular to one base network lives in that network's settings
(``config.backbone``, owned by its module in ``ssd_jax.models``); ``detect``'s post-processing
defaults in ``config.postprocess``.

Presets (``PRESETS``; ``register_preset`` adds one):
  ``ssd300``              the paper's SSD300, VOC default-box sizes, 21 classes.
  ``ssd300_coco``         SSD300 with the COCO default-box sizes, 81 classes.
  ``ssd512``              the paper's SSD512, VOC sizes.
  ``ssd300_torchvision``  torchvision's ssd300_vgg16: 91 classes, COCO scales, w/h clamp of the
                          default boxes and its decode clamp, so that its weights reproduce its
                          detections.
  ``ssd_tiny``            the same layer types with narrow, shallower layers and a 128-pixel
                          input, for tests and the CPU quickstart.
  ``ssdlite320_mobilenet_v3_large``  torchvision's SSDLite: MobileNetV3-Large (reduced tail, as
                          its COCO model), depthwise-separable extra layers and heads, 320-pixel
                          input, 91 classes; ``..._full``: the full-width tail, for torchvision's
                          ImageNet MobileNetV3 weights.
  ``ssd300_resnet50``     SSD300 on ResNet-50 as NVIDIA's DeepLearningExamples recipe builds it.

``to_dict`` / ``from_dict`` write and read the JSON form stored with checkpoints and exports;
``from_dict`` also reads the files of earlier versions (``upgrade``, the one conversion).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

from ssd_jax.models import base_networks, caffe_net  # noqa: F401  (each network module registers itself)
from ssd_jax.models.mobilenet_v3 import MobileNetV3Settings
from ssd_jax.models.resnet import ResNet50Settings
from ssd_jax.models.vgg import IMAGENET_MEAN_RGB, VGG16Settings
from ssd_jax.nms import PostprocessOptions

# torchvision's box coder clamps the decoded log-scale here (log(1000 / 16)).
TORCHVISION_DECODE_CLAMP = math.log(1000.0 / 16)
# torchvision writes the same mean as fractions of 255 (0.48235, 0.45882, 0.40784).
TORCHVISION_MEAN_RGB = (0.48235 * 255, 0.45882 * 255, 0.40784 * 255)
# ImageNet statistics of torchvision's classification weights, in [0, 255] pixels.
TORCHVISION_IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
TORCHVISION_IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# How default boxes are clipped to the image: 'none' (the Caffe original), 'wh' (torchvision:
# widths and heights to at most 1), 'all' (every centre-form coordinate to [0, 1], as ports with
# clip=True do), 'corners' (the corners to [0, 1]: Caffe's and OpenCV's PriorBox clip).
PRIOR_CLIP_MODES = ("none", "wh", "all", "corners")
# Heads (and extra layers): 'plain' 3x3 convolutions with ReLU (the paper), or 'lite' (SSDLite:
# depthwise 3x3 + BatchNorm + ReLU6, then a 1x1 convolution; extra layers 1x1 -> depthwise 3x3
# -> 1x1, ReLU6).
HEADS = ("plain", "lite")
# The version of the JSON form that to_dict writes; from_dict upgrades older ones.
CONFIG_VERSION = 2


@dataclasses.dataclass(frozen=True)
class ExtraLayer:
    """One extra feature block: a 1x1 conv to ``mid`` channels, then a ``kernel`` conv to ``out``
    (with ``head='lite'``: a depthwise ``kernel`` conv on the ``mid`` channels, then a 1x1 conv to
    ``out``)."""

    mid: int
    out: int
    kernel: int = 3
    stride: int = 2
    padding: int = 1


@dataclasses.dataclass(frozen=True)
class SSDConfig:
    """Everything that fixes an SSD model's shapes and box conventions.

    Sizes (``steps``, ``min_sizes``, ``max_sizes``) are in input pixels; one entry per source
    feature map, sources ordered as the base network gives them (VGG16: conv4_3, fc7), then the
    extra blocks.
    """

    name: str
    num_classes: int  # including background (class 0)
    image_size: int
    feature_map_sizes: tuple[int, ...]
    steps: tuple[float, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    # The base network's settings: a dataclass registered in ssd_jax.models.base_networks.
    backbone: object = VGG16Settings()
    head: str = "plain"  # one of HEADS
    extras: tuple[ExtraLayer, ...] = ()
    # Box conventions.
    variances: tuple[float, float] = (0.1, 0.2)
    prior_clip: str = "none"  # one of PRIOR_CLIP_MODES
    decode_clamp: float | None = None  # upper bound on the decoded log-scale, None for none
    clip_boxes: bool = True  # clip detections to the image
    # Input normalisation: (pixels in [0, 255] - mean_rgb) / std_rgb, RGB.
    mean_rgb: tuple[float, float, float] = IMAGENET_MEAN_RGB
    std_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # detect's post-processing defaults for this model (e.g. a Caffe model's DetectionOutput);
    # None: SSD's (nms.DEFAULTS).
    postprocess: PostprocessOptions | None = None

    def __post_init__(self):
        validate(self)

    @property
    def base_network(self) -> base_networks.BaseNetwork:
        """The registry entry of ``backbone``."""
        return base_networks.of(self.backbone)

    @property
    def num_sources(self) -> int:
        return len(self.feature_map_sizes)

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        """Default boxes per feature-map cell: (s, s), (s', s'), then two per aspect ratio."""
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_priors(self) -> int:
        return sum(n * size * size for n, size in zip(self.boxes_per_location, self.feature_map_sizes))


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


_VGG16 = VGG16Settings()


def architecture_feature_map_sizes(image_size: int, extras: tuple[ExtraLayer, ...], backbone=_VGG16
                                   ) -> tuple[int, ...]:
    """Spatial sizes of the source maps that the base network ``backbone`` (its settings) and
    ``extras`` produce from ``image_size``."""
    sizes = list(base_networks.of(backbone).source_sizes(backbone, image_size))
    for extra in extras:
        sizes.append(_conv_out(sizes[-1], extra.kernel, extra.stride, extra.padding))
    return tuple(sizes)


def validate(config: SSDConfig) -> None:
    """Raises ``ValueError`` naming the first inconsistency in ``config``."""
    name = f"SSDConfig {config.name!r}"
    try:
        network = base_networks.of(config.backbone)
    except ValueError as error:
        raise ValueError(f"{name}: backbone: {error}") from None
    if config.head not in HEADS:
        raise ValueError(f"{name}: head must be one of {HEADS}, got {config.head!r}")
    if len(config.std_rgb) != 3 or min(config.std_rgb) <= 0:
        raise ValueError(f"{name}: std_rgb must be three positive numbers, got {config.std_rgb}")
    if config.num_classes < 2:
        raise ValueError(f"{name}: num_classes={config.num_classes} must count background and at least one class")
    if config.image_size <= 0:
        raise ValueError(f"{name}: image_size must be positive, got {config.image_size}")
    expected = architecture_feature_map_sizes(config.image_size, config.extras, config.backbone)
    per_source = {"feature_map_sizes": config.feature_map_sizes, "steps": config.steps,
                  "min_sizes": config.min_sizes, "max_sizes": config.max_sizes, "aspect_ratios": config.aspect_ratios}
    for field, values in per_source.items():
        if len(values) != len(expected):
            raise ValueError(
                f"{name}: {field} has {len(values)} entries but the model has {len(expected)} source feature maps "
                f"({len(expected) - len(config.extras)} of {network.kind} and {len(config.extras)} extra layers)")
    if min(expected) < 1:
        raise ValueError(f"{name}: image_size {config.image_size} is too small for these layers: sizes {expected}")
    if tuple(config.feature_map_sizes) != expected:
        raise ValueError(f"{name}: feature_map_sizes {tuple(config.feature_map_sizes)} do not match the sizes "
                         f"{expected} that the layers produce from a {config.image_size}-pixel input")
    for i, (lo, hi) in enumerate(zip(config.min_sizes, config.max_sizes)):
        if not 0 < lo <= hi:
            raise ValueError(f"{name}: source {i} needs 0 < min_size <= max_size, got {lo}, {hi}")
    if any(step <= 0 for step in config.steps):
        raise ValueError(f"{name}: steps must be positive, got {config.steps}")
    if any(r <= 0 for ratios in config.aspect_ratios for r in ratios):
        raise ValueError(f"{name}: aspect ratios must be positive, got {config.aspect_ratios}")
    if config.prior_clip not in PRIOR_CLIP_MODES:
        raise ValueError(f"{name}: prior_clip must be one of {PRIOR_CLIP_MODES}, got {config.prior_clip!r}")
    if len(config.variances) != 2 or min(config.variances) <= 0:
        raise ValueError(f"{name}: variances must be two positive numbers, got {config.variances}")
    if config.postprocess is not None and not isinstance(config.postprocess, PostprocessOptions):
        raise ValueError(f"{name}: postprocess must be a PostprocessOptions or None, got {config.postprocess!r}")


# ----------------------------------------------------------------------------- presets
_SSD300_EXTRAS = (
    ExtraLayer(256, 512, kernel=3, stride=2, padding=1),
    ExtraLayer(128, 256, kernel=3, stride=2, padding=1),
    ExtraLayer(128, 256, kernel=3, stride=1, padding=0),
    ExtraLayer(128, 256, kernel=3, stride=1, padding=0),
)
_SSD300_RATIOS = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))
_SSD300_STEPS = (8, 16, 32, 64, 100, 300)
_VOC300_SIZES = (30.0, 60.0, 111.0, 162.0, 213.0, 264.0, 315.0)
_COCO300_SIZES = (21.0, 45.0, 99.0, 153.0, 207.0, 261.0, 315.0)


def _ssd300(name: str, num_classes: int, sizes: tuple[float, ...], **overrides) -> SSDConfig:
    fields = {"extras": _SSD300_EXTRAS, **overrides}
    return SSDConfig(
        name=name,
        num_classes=num_classes,
        image_size=300,
        feature_map_sizes=(38, 19, 10, 5, 3, 1),
        steps=_SSD300_STEPS,
        min_sizes=sizes[:-1],
        max_sizes=sizes[1:],
        aspect_ratios=_SSD300_RATIOS,
        **fields,
    )


def ssd300(num_classes: int = 21) -> SSDConfig:
    """The paper's SSD300 with the VOC default-box sizes (Caffe: priors not clipped)."""
    return _ssd300("ssd300", num_classes, _VOC300_SIZES)


def ssd300_coco(num_classes: int = 81) -> SSDConfig:
    """SSD300 with the COCO default-box sizes (min 21 ... max 315 pixels)."""
    return _ssd300("ssd300_coco", num_classes, _COCO300_SIZES)


def ssd300_torchvision(num_classes: int = 91) -> SSDConfig:
    """torchvision's ``ssd300_vgg16``: COCO scales, priors' w/h clamped to [0, 1], decode clamp."""
    return _ssd300("ssd300_torchvision", num_classes, _COCO300_SIZES, prior_clip="wh",
                   decode_clamp=TORCHVISION_DECODE_CLAMP, mean_rgb=TORCHVISION_MEAN_RGB)


def ssd512(num_classes: int = 21) -> SSDConfig:
    """The paper's SSD512 (VOC sizes): seven sources, the last extra conv 4x4 with padding 1."""
    sizes = (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6)
    return SSDConfig(
        name="ssd512",
        num_classes=num_classes,
        image_size=512,
        feature_map_sizes=(64, 32, 16, 8, 4, 2, 1),
        steps=(8, 16, 32, 64, 128, 256, 512),
        min_sizes=sizes[:-1],
        max_sizes=sizes[1:],
        aspect_ratios=((2.0,),) + ((2.0, 3.0),) * 4 + ((2.0,), (2.0,)),
        extras=(
            ExtraLayer(256, 512, kernel=3, stride=2, padding=1),
            ExtraLayer(128, 256, kernel=3, stride=2, padding=1),
            ExtraLayer(128, 256, kernel=3, stride=2, padding=1),
            ExtraLayer(128, 256, kernel=3, stride=2, padding=1),
            ExtraLayer(128, 256, kernel=4, stride=1, padding=1),
        ),
    )


def ssd_tiny(num_classes: int = 21) -> SSDConfig:
    """A small SSD on 128-pixel inputs for CPUs: the same layer types, widths / 8, five sources.

    The VGG blocks hold 1, 1, 2, 2, 2 convolutions instead of 2, 2, 3, 3, 3, so that the
    full-resolution layers, which cost the most on a CPU, run once. Source maps 16, 8, 4, 2, 1;
    default-box scales spread evenly from 0.1 to 0.9 of the image as in the paper's formula. The
    extra blocks are wide (64 -> 128): on maps of 4x4 and less they cost almost nothing. No
    L2Norm on conv4_3: it is trained from scratch with BatchNorm, which keeps conv4_3's
    activations in scale. How these were chosen: benchmarks/RESULTS.md (the quickstart recipe).
    """
    image_size = 128
    backbone = VGG16Settings(widths=(8, 16, 32, 64, 64), depths=(1, 1, 2, 2, 2), fc_width=128, l2norm_scale=None)
    extras = (ExtraLayer(64, 128),) * 3  # 3x3, stride 2: 8 -> 4 -> 2 -> 1
    feature_maps = architecture_feature_map_sizes(image_size, extras, backbone)
    scales = (0.1, 0.2, 0.375, 0.55, 0.725, 0.9)
    sizes = tuple(s * image_size for s in scales)
    return SSDConfig(
        name="ssd_tiny",
        num_classes=num_classes,
        image_size=image_size,
        feature_map_sizes=feature_maps,
        steps=tuple(image_size / f for f in feature_maps),
        min_sizes=sizes[:-1],
        max_sizes=sizes[1:],
        aspect_ratios=((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,)),
        backbone=backbone,
        extras=extras,
    )


def ssdlite320_mobilenet_v3_large(num_classes: int = 91, *, reduced_tail: bool = True) -> SSDConfig:
    """torchvision's ``ssdlite320_mobilenet_v3_large``: its architecture, default boxes and input.

    Sources: MobileNetV3-Large's expansion layer of its last stride-2 block (672 channels,
    20x20) and its last layer (10x10: 480 channels with the reduced tail that torchvision uses
    when no ImageNet backbone is given, as for its COCO weights; 960 without), then four extra
    blocks (1x1 -> depthwise 3x3/2 -> 1x1, ReLU6) to 512, 256, 256 and 128 channels: maps 5, 3,
    2, 1. Default boxes as torchvision's ``DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2,
    max_ratio=0.95)``: scales 0.2 ... 0.95 and 1.0, centres (j + 0.5) / size, w/h clipped to 1.
    Input (pixels / 255 - 0.5) / 0.5; decoded boxes clamped like torchvision's box coder.
    """
    image_size = 320
    backbone = MobileNetV3Settings(reduced_tail=reduced_tail)
    extras = (ExtraLayer(256, 512), ExtraLayer(128, 256), ExtraLayer(128, 256), ExtraLayer(64, 128))
    feature_maps = architecture_feature_map_sizes(image_size, extras, backbone)
    scales = [0.2 + (0.95 - 0.2) * k / (len(feature_maps) - 1) for k in range(len(feature_maps))] + [1.0]
    return SSDConfig(
        name="ssdlite320_mobilenet_v3_large" if reduced_tail else "ssdlite320_mobilenet_v3_large_full",
        num_classes=num_classes,
        image_size=image_size,
        feature_map_sizes=feature_maps,
        steps=tuple(image_size / f for f in feature_maps),
        min_sizes=tuple(s * image_size for s in scales[:-1]),
        max_sizes=tuple(s * image_size for s in scales[1:]),
        aspect_ratios=((2.0, 3.0),) * len(feature_maps),
        backbone=backbone,
        head="lite",
        extras=extras,
        prior_clip="wh",
        decode_clamp=TORCHVISION_DECODE_CLAMP,
        mean_rgb=(127.5, 127.5, 127.5),
        std_rgb=(127.5, 127.5, 127.5),
    )


def ssd300_resnet50(num_classes: int = 81) -> SSDConfig:
    """SSD300 on ResNet-50, as NVIDIA's DeepLearningExamples (PyTorch/Detection/SSD) builds it.

    ResNet-50 up to conv4_x (torchvision's ``layer3``), whose first block runs at stride 1, so
    the one backbone source is 1024 x 38 x 38; five extra blocks (1x1 to 256, 256, 128, 128, 128
    channels, then 3x3 to 512, 512, 256, 256, 256: three at stride 2 / pad 1, two at stride 1 /
    pad 0): maps 19, 10, 5, 3, 1. Default boxes: their ``dboxes300_coco`` (the COCO sizes 21 ...
    315, steps 8 ... 300, ratios 2 / 2,3, all four of (cx, cy, w, h) clamped to [0, 1]). Input:
    torchvision's ImageNet mean and std. No L2Norm. Detections as their ``Encoder.decode_batch``
    gives them: not clipped to the image; per class the scores above 0.05, the best 200, NMS at
    0.45; the best 200 overall. ``weights.from_nvidia`` imports their checkpoints.
    """
    return _ssd300(
        "ssd300_resnet50",
        num_classes,
        _COCO300_SIZES,
        backbone=ResNet50Settings(),
        extras=(
            ExtraLayer(256, 512, kernel=3, stride=2, padding=1),
            ExtraLayer(256, 512, kernel=3, stride=2, padding=1),
            ExtraLayer(128, 256, kernel=3, stride=2, padding=1),
            ExtraLayer(128, 256, kernel=3, stride=1, padding=0),
            ExtraLayer(128, 256, kernel=3, stride=1, padding=0),
        ),
        prior_clip="all",
        clip_boxes=False,
        mean_rgb=TORCHVISION_IMAGENET_MEAN_RGB,
        std_rgb=TORCHVISION_IMAGENET_STD_RGB,
        postprocess=PostprocessOptions(score_threshold=0.05, iou_threshold=0.45, pre_nms_top_k=200,
                                       max_detections=200),
    )


PRESETS: dict[str, Callable[..., SSDConfig]] = {
    "ssd300": ssd300,
    "ssd300_coco": ssd300_coco,
    "ssd300_torchvision": ssd300_torchvision,
    "ssd512": ssd512,
    "ssd_tiny": ssd_tiny,
    "ssdlite320_mobilenet_v3_large": ssdlite320_mobilenet_v3_large,
    # The same with the full-width tail: the one that takes torchvision's ImageNet MobileNetV3 weights.
    "ssdlite320_mobilenet_v3_large_full": functools.partial(ssdlite320_mobilenet_v3_large, reduced_tail=False),
    "ssd300_resnet50": ssd300_resnet50,
}


def register_preset(name: str, preset: Callable[..., SSDConfig]) -> None:
    """Makes ``preset(num_classes=...) -> SSDConfig`` available by ``name`` (``get``, the training
    config's ``model``), e.g. for a base network of your own."""
    PRESETS[name] = preset


def get(name: str, **kwargs) -> SSDConfig:
    """Looks a preset up by name, e.g. ``get('ssd300', num_classes=21)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown SSD config {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)


# ----------------------------------------------------------------------------- JSON form
def to_dict(config: SSDConfig) -> dict:
    """A JSON-ready dict of ``config`` (stored beside checkpoints and in exports)."""
    values = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    values["backbone"] = base_networks.to_dict(config.backbone)
    values["extras"] = [dataclasses.asdict(extra) for extra in config.extras]
    values["postprocess"] = None if config.postprocess is None else config.postprocess._asdict()
    return {"config_version": CONFIG_VERSION, **values}


def from_dict(values: dict) -> SSDConfig:
    """Inverse of ``to_dict``; validates the result. Reads the dicts of earlier versions too."""
    values = dict(values)
    if values.pop("config_version", 1) < CONFIG_VERSION:
        values = upgrade(values)
    values["backbone"] = base_networks.from_dict(values["backbone"])
    values["extras"] = tuple(ExtraLayer(**extra) for extra in values.get("extras", ()))
    values["postprocess"] = None if values.get("postprocess") is None else PostprocessOptions(**values["postprocess"])
    values["aspect_ratios"] = tuple(tuple(r) for r in values["aspect_ratios"])
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return SSDConfig(**values)


# Base networks of version 1 files: the 'backbone' name and the flat fields that were its settings.
_V1_BACKBONE_FIELDS = ("reduced_tail", "caffe_layers", "caffe_input", "caffe_sources", "backbone_widths",
                       "backbone_depths", "fc_width", "l2norm_scale")
# Fields of version 1 files that are training settings now (train.default_config).
_V1_TRAINING_FIELDS = ("match_iou_threshold", "neg_pos_ratio")


def upgrade(values: dict) -> dict:
    """A config dict of version 1 (every ssd_jax release before the base networks' own settings:
    ``backbone`` a name and its settings flat beside it, or no ``backbone`` at all for the oldest
    VGG16 files; ``postprocess`` a 4-tuple; matching settings in the model config) -> the
    current dict form, before the dataclasses are rebuilt."""
    values = {key: value for key, value in values.items() if key not in _V1_TRAINING_FIELDS}
    kind = values.pop("backbone", "vgg16")
    old = {field: values.pop(field) for field in _V1_BACKBONE_FIELDS if field in values}
    if kind == "vgg16":
        defaults = VGG16Settings()
        settings = {"widths": old.get("backbone_widths", defaults.widths),
                    "depths": old.get("backbone_depths", defaults.depths),
                    "fc_width": old.get("fc_width", defaults.fc_width),
                    "l2norm_scale": old.get("l2norm_scale", defaults.l2norm_scale)}
    elif kind == "mobilenet_v3_large":
        settings = {"reduced_tail": old.get("reduced_tail", False)}
    elif kind == "caffe":
        settings = {"layers": old.get("caffe_layers", []), "sources": old.get("caffe_sources", []),
                    "input_blob": old.get("caffe_input", "data")}
    else:
        settings = {}
    values["backbone"] = {"kind": kind, **settings}
    postprocess = values.get("postprocess")
    if isinstance(postprocess, (list, tuple)):
        values["postprocess"] = dict(zip(PostprocessOptions._fields, postprocess))
    return values
