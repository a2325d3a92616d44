"""Model configurations: frozen, hashable ``SSDConfig`` and the presets.

A config fixes everything that shapes the compiled program: the input size, the layer widths,
the default boxes and the box-coding conventions. Being frozen and hashable, it can be passed to
``jax.jit`` as a static argument and used as a cache key.

Presets:
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

The base network is a choice (``backbone``): each of ``BACKBONES`` is one module of
``ssd_jax.models`` that returns the first source feature maps; the extra layers continue from
the last of them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

# Caffe's VGG16 ImageNet mean in RGB order; subtracted inside the model.
IMAGENET_MEAN_RGB = (123.0, 117.0, 104.0)
# torchvision's box coder clamps the decoded log-scale here (log(1000 / 16)).
TORCHVISION_DECODE_CLAMP = math.log(1000.0 / 16)
# torchvision writes the same mean as fractions of 255 (0.48235, 0.45882, 0.40784).
TORCHVISION_MEAN_RGB = (0.48235 * 255, 0.45882 * 255, 0.40784 * 255)

# How default boxes are clipped to the image: 'none' (the Caffe original), 'wh' (torchvision:
# widths and heights to at most 1), 'all' (every centre-form coordinate to [0, 1], as ports with
# clip=True do), 'corners' (the corners to [0, 1]: Caffe's and OpenCV's PriorBox clip).
PRIOR_CLIP_MODES = ("none", "wh", "all", "corners")
# Convolutions per block of VGG16 (conv1_1, conv1_2 | conv2_1, conv2_2 | conv3_1 .. conv3_3 | ...).
VGG16_BLOCK_DEPTHS = (2, 2, 3, 3, 3)
# Base networks: the module of ssd_jax.models for each, and how many source maps it gives
# ("caffe": a network read from a Caffe prototxt, with its own sources: SSDConfig.caffe_sources).
BACKBONE_SOURCES = {"vgg16": 2, "mobilenet_v3_large": 2, "resnet50": 1, "caffe": None}
CAFFE_LAYER_KINDS = ("conv", "affine", "relu", "max_pool", "avg_pool", "eltwise_sum", "normalize", "concat")
# Heads (and extra layers): 'plain' 3x3 convolutions with ReLU (the paper), or 'lite' (SSDLite:
# depthwise 3x3 + BatchNorm + ReLU6, then a 1x1 convolution; extra layers 1x1 -> depthwise 3x3
# -> 1x1, ReLU6).
HEADS = ("plain", "lite")
# ImageNet statistics of torchvision's classification weights, in [0, 255] pixels.
TORCHVISION_IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
TORCHVISION_IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Fields of configs saved by earlier versions that are now training settings (train.default_config).
_FORMER_FIELDS = ("match_iou_threshold", "neg_pos_ratio")


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
class CaffeLayer:
    """One layer of a network imported from Caffe (``ssd_jax.caffe``), run by
    ``ssd_jax.models.caffe_net.CaffeNet``. ``inputs`` and ``output`` name blob versions (a blob
    written in place gets a new version). Kinds: conv (``features``, ``kernel``, ``stride``,
    ``pad``, ``dilation``, ``groups``), affine (per-channel gain and shift: BatchNorm and Scale
    that could not fold into a convolution), relu (``slope`` for negative inputs), max_pool and
    avg_pool (Caffe's rounding up; ``kernel`` 0: global), eltwise_sum, normalize (L2 across
    channels, learned scale, ``eps``), concat (channels)."""

    kind: str
    name: str
    inputs: tuple[str, ...]
    output: str
    features: int = 0
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    groups: int = 1
    slope: float = 0.0
    eps: float = 0.0


def caffe_output_size(layer: CaffeLayer, size: int) -> int:
    """Spatial size of ``layer``'s output for an input of ``size``: convolutions round down,
    Caffe's pooling rounds up (but never starts a window in the bottom/right padding)."""
    if layer.kind == "conv":
        return (size + 2 * layer.pad - layer.dilation * (layer.kernel - 1) - 1) // layer.stride + 1
    if layer.kind in ("max_pool", "avg_pool"):
        if layer.kernel == 0:
            return 1
        out = -(-(size + 2 * layer.pad - layer.kernel) // layer.stride) + 1
        if layer.pad and (out - 1) * layer.stride >= size + layer.pad:
            out -= 1
        return out
    return size


def caffe_blob_sizes(layers: tuple[CaffeLayer, ...], input_blob: str, image_size: int) -> dict[str, int]:
    """Spatial size of every blob version of an imported Caffe network."""
    sizes = {input_blob: image_size}
    for layer in layers:
        sizes[layer.output] = caffe_output_size(layer, sizes[layer.inputs[0]])
    return sizes


@dataclasses.dataclass(frozen=True)
class SSDConfig:
    """Everything that fixes an SSD model's shapes and box conventions.

    Sizes (``steps``, ``min_sizes``, ``max_sizes``) are in input pixels; one entry per source
    feature map, sources ordered as the backbone gives them (VGG16: conv4_3, fc7), then the
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
    backbone: str = "vgg16"  # one of BACKBONE_SOURCES
    head: str = "plain"  # one of HEADS
    # MobileNetV3: the last stage at half width (160 -> 80 channels, last layer 960 -> 480), as
    # torchvision builds SSDLite without an ImageNet backbone (so its COCO weights have it).
    reduced_tail: bool = False
    # backbone "caffe": the imported network's layers, its input blob and the blobs the heads read.
    caffe_layers: tuple[CaffeLayer, ...] = ()
    caffe_input: str = "data"
    caffe_sources: tuple[str, ...] = ()
    # VGG16 widths: blocks conv1..conv5, fc6/fc7; convolutions per VGG block.
    backbone_widths: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    backbone_depths: tuple[int, int, int, int, int] = VGG16_BLOCK_DEPTHS
    fc_width: int = 1024
    extras: tuple[ExtraLayer, ...] = ()
    # Box conventions.
    variances: tuple[float, float] = (0.1, 0.2)
    prior_clip: str = "none"  # one of PRIOR_CLIP_MODES
    decode_clamp: float | None = None  # upper bound on the decoded log-scale, None for none
    clip_boxes: bool = True  # clip detections to the image
    # Input normalisation: (pixels in [0, 255] - mean_rgb) / std_rgb, RGB.
    mean_rgb: tuple[float, float, float] = IMAGENET_MEAN_RGB
    std_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    l2norm_scale: float | None = 20.0  # initial scale of conv4_3's L2Norm; None: no L2Norm
    # detect's post-processing defaults for this model (score_threshold, iou_threshold,
    # pre_nms_top_k, max_detections), e.g. a Caffe model's DetectionOutput; None: SSD's.
    postprocess: tuple[float, float, int, int] | None = None

    def __post_init__(self):
        validate(self)

    @property
    def num_sources(self) -> int:
        if self.backbone == "caffe":
            return len(self.caffe_sources) + len(self.extras)
        return BACKBONE_SOURCES.get(self.backbone, 2) + len(self.extras)

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        """Default boxes per feature-map cell: (s, s), (s', s'), then two per aspect ratio."""
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_priors(self) -> int:
        return sum(n * size * size for n, size in zip(self.boxes_per_location, self.feature_map_sizes))


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def backbone_feature_map_sizes(backbone: str, image_size: int) -> list[int]:
    """Spatial sizes of the source maps that ``backbone`` gives for an ``image_size`` input.

    vgg16: pool1, pool2 and pool4 round down, pool3 rounds up (75 -> 38 in SSD300); the 3x3
    convs, pool5 (3x3/1/pad 1) and the dilated fc6 keep the size.
    mobilenet_v3_large: five stride-2 convolutions with "same"-style padding (each rounds up);
    the sources are the expansion of the block before the last one (1/16) and the last layer (1/32).
    resnet50: conv1 7x7/2/pad 3, max pool 3x3/2/pad 1, conv3_x's stride 2, conv4_x at stride 1.
    """
    if backbone == "mobilenet_v3_large":
        size = image_size
        for _ in range(4):
            size = _conv_out(size, 3, 2, 1)
        return [size, _conv_out(size, 3, 2, 1)]
    if backbone == "resnet50":
        size = _conv_out(_conv_out(image_size, 7, 2, 3), 3, 2, 1)  # conv1, max pool
        return [_conv_out(size, 3, 2, 1)]  # conv3_x's first 3x3 conv; conv4_x keeps the size
    size = image_size // 2  # pool1
    size = size // 2  # pool2
    size = -(-size // 2)  # pool3, ceil mode
    return [size, size // 2]  # conv4_3, fc7 (after pool4)


def architecture_feature_map_sizes(
    image_size: int, extras: tuple[ExtraLayer, ...], backbone: str = "vgg16", config: SSDConfig | None = None
) -> tuple[int, ...]:
    """Spatial sizes of the source maps that ``backbone`` and ``extras`` produce from ``image_size``
    (a "caffe" backbone takes its layers from ``config``)."""
    if backbone == "caffe":
        blobs = caffe_blob_sizes(config.caffe_layers, config.caffe_input, image_size)
        sizes = [blobs[source] for source in config.caffe_sources]
    else:
        sizes = backbone_feature_map_sizes(backbone, image_size)
    size = sizes[-1]
    for extra in extras:
        size = _conv_out(size, extra.kernel, extra.stride, extra.padding)
        sizes.append(size)
    return tuple(sizes)


def validate(config: SSDConfig) -> None:
    """Raises ``ValueError`` naming the first inconsistency in ``config``."""
    name = f"SSDConfig {config.name!r}"
    if config.backbone not in BACKBONE_SOURCES:
        raise ValueError(f"{name}: backbone must be one of {sorted(BACKBONE_SOURCES)}, got {config.backbone!r}")
    if config.head not in HEADS:
        raise ValueError(f"{name}: head must be one of {HEADS}, got {config.head!r}")
    if config.backbone == "caffe":
        _validate_caffe(config, name)
    if len(config.std_rgb) != 3 or min(config.std_rgb) <= 0:
        raise ValueError(f"{name}: std_rgb must be three positive numbers, got {config.std_rgb}")
    if config.num_classes < 2:
        raise ValueError(f"{name}: num_classes={config.num_classes} must count background and at least one class")
    if config.image_size <= 0:
        raise ValueError(f"{name}: image_size must be positive, got {config.image_size}")
    per_source = {
        "feature_map_sizes": config.feature_map_sizes,
        "steps": config.steps,
        "min_sizes": config.min_sizes,
        "max_sizes": config.max_sizes,
        "aspect_ratios": config.aspect_ratios,
    }
    for field, values in per_source.items():
        if len(values) != config.num_sources:
            raise ValueError(
                f"{name}: {field} has {len(values)} entries but the model has {config.num_sources} "
                f"source feature maps ({config.num_sources - len(config.extras)} of {config.backbone} and "
                f"{len(config.extras)} extra layers)"
            )
    expected = architecture_feature_map_sizes(config.image_size, config.extras, config.backbone, config)
    if min(expected) < 1:
        raise ValueError(f"{name}: image_size {config.image_size} is too small for these layers: sizes {expected}")
    if tuple(config.feature_map_sizes) != expected:
        raise ValueError(
            f"{name}: feature_map_sizes {tuple(config.feature_map_sizes)} do not match the sizes "
            f"{expected} that the layers produce from a {config.image_size}-pixel input"
        )
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
    if len(config.backbone_widths) != 5 or min(config.backbone_widths) <= 0 or config.fc_width <= 0:
        raise ValueError(f"{name}: backbone_widths needs 5 positive widths and fc_width > 0")
    if len(config.backbone_depths) != 5 or min(config.backbone_depths) <= 0:
        raise ValueError(f"{name}: backbone_depths needs 5 positive convolution counts, got {config.backbone_depths}")
    if config.l2norm_scale is not None and config.l2norm_scale <= 0:
        raise ValueError(f"{name}: l2norm_scale must be positive or None, got {config.l2norm_scale}")


def _validate_caffe(config: SSDConfig, name: str) -> None:
    known = {config.caffe_input}
    for layer in config.caffe_layers:
        if layer.kind not in CAFFE_LAYER_KINDS:
            raise ValueError(f"{name}: Caffe layer {layer.name!r} has unknown kind {layer.kind!r}")
        missing = [blob for blob in layer.inputs if blob not in known]
        if missing or not layer.inputs:
            raise ValueError(f"{name}: Caffe layer {layer.name!r} reads {missing or 'nothing'}, not written before it")
        known.add(layer.output)
    if not config.caffe_sources or any(source not in known for source in config.caffe_sources):
        raise ValueError(f"{name}: caffe_sources {config.caffe_sources} must name blobs of caffe_layers")
    if config.postprocess is not None and len(config.postprocess) != 4:
        raise ValueError(f"{name}: postprocess must be (score_threshold, iou_threshold, pre_nms_top_k, "
                         f"max_detections), got {config.postprocess}")


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
    return _ssd300(
        "ssd300_torchvision",
        num_classes,
        _COCO300_SIZES,
        prior_clip="wh",
        decode_clamp=TORCHVISION_DECODE_CLAMP,
        mean_rgb=TORCHVISION_MEAN_RGB,
    )


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
    extras = (ExtraLayer(64, 128),) * 3  # 3x3, stride 2: 8 -> 4 -> 2 -> 1
    feature_maps = architecture_feature_map_sizes(image_size, extras)
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
        backbone_widths=(8, 16, 32, 64, 64),
        backbone_depths=(1, 1, 2, 2, 2),
        fc_width=128,
        extras=extras,
        l2norm_scale=None,
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
    extras = (ExtraLayer(256, 512), ExtraLayer(128, 256), ExtraLayer(128, 256), ExtraLayer(64, 128))
    feature_maps = architecture_feature_map_sizes(image_size, extras, "mobilenet_v3_large")
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
        backbone="mobilenet_v3_large",
        head="lite",
        reduced_tail=reduced_tail,
        extras=extras,
        prior_clip="wh",
        decode_clamp=TORCHVISION_DECODE_CLAMP,
        mean_rgb=(127.5, 127.5, 127.5),
        std_rgb=(127.5, 127.5, 127.5),
        l2norm_scale=None,
    )


def ssd300_resnet50(num_classes: int = 81) -> SSDConfig:
    """SSD300 on ResNet-50, as NVIDIA's DeepLearningExamples (PyTorch/Detection/SSD) builds it.

    ResNet-50 up to conv4_x (torchvision's ``layer3``), whose first block runs at stride 1, so
    the one backbone source is 1024 x 38 x 38; five extra blocks (1x1 to 256, 256, 128, 128, 128
    channels, then 3x3 to 512, 512, 256, 256, 256: three at stride 2 / pad 1, two at stride 1 /
    pad 0): maps 19, 10, 5, 3, 1. Default boxes: their ``dboxes300_coco`` (the COCO sizes 21 ...
    315, steps 8 ... 300, ratios 2 / 2,3, w/h clamped to 1). Input: torchvision's ImageNet mean
    and std. No L2Norm. Facts and sources: SSD_REFERENCE.md in the design notes, README presets.
    """
    return _ssd300(
        "ssd300_resnet50",
        num_classes,
        _COCO300_SIZES,
        backbone="resnet50",
        extras=(
            ExtraLayer(256, 512, kernel=3, stride=2, padding=1),
            ExtraLayer(256, 512, kernel=3, stride=2, padding=1),
            ExtraLayer(128, 256, kernel=3, stride=2, padding=1),
            ExtraLayer(128, 256, kernel=3, stride=1, padding=0),
            ExtraLayer(128, 256, kernel=3, stride=1, padding=0),
        ),
        prior_clip="wh",
        mean_rgb=TORCHVISION_IMAGENET_MEAN_RGB,
        std_rgb=TORCHVISION_IMAGENET_STD_RGB,
        l2norm_scale=None,
    )


PRESETS = {
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


def get(name: str, **kwargs) -> SSDConfig:
    """Looks a preset up by name, e.g. ``get('ssd300', num_classes=21)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown SSD config {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)


def to_dict(config: SSDConfig) -> dict:
    """A JSON-ready dict of ``config`` (stored beside checkpoints)."""
    return dataclasses.asdict(config)


def from_dict(values: dict) -> SSDConfig:
    """Inverse of ``to_dict``; validates the result. Accepts the dicts of earlier versions."""
    values = {key: value for key, value in values.items() if key not in _FORMER_FIELDS}
    values["extras"] = tuple(ExtraLayer(**extra) for extra in values.get("extras", ()))
    values["caffe_layers"] = tuple(CaffeLayer(**{k: tuple(v) if isinstance(v, list) else v for k, v in layer.items()})
                                   for layer in values.get("caffe_layers", ()))
    values["aspect_ratios"] = tuple(tuple(r) for r in values["aspect_ratios"])
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return SSDConfig(**values)
