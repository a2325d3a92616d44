"""The training config: its fields (the recipe's defaults, and the fields of every registered
data source), and its checks, which list every problem at once.

Recipes are ml_collections files in ``experiments/configs`` whose ``get_config()`` starts from
``default_config()``: the paper's SSD300 VOC07+12 recipe.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

from ssd_jax import configs
from ssd_jax.data import sources


class ConfigError(ValueError):
    """The training config has invalid fields; the message lists every one."""


def default_config() -> ml_collections.ConfigDict:
    """The paper's SSD300 VOC07+12 recipe (batch 32, 120k steps, lr 1e-3 x0.1 at 80k and 100k)."""
    config = ml_collections.ConfigDict()
    config.model = "ssd300"  # a preset of ssd_jax.configs; num_classes comes from the data set
    # A registered data source (ssd_jax.data.sources): a TFDS data set (voc, coco, shapes), your own
    # on disk ('vocdir': a VOC folder or VOCdevkit in data_dir; 'cocojson': its four paths), ...
    config.dataset = "voc"
    # ... and the fields the sources read (data_dir, the cocojson paths), each None until set.
    for name, field in sources.all_fields().items():
        config[name] = ml_collections.config_dict.placeholder(str) if field.default is None else field.default
    # Data on disk: the classes and their order, comma-separated (default: the names in the data,
    # sorted; objects of other names are skipped and counted).
    config.class_names = ""
    config.batch_size = 32  # global, over all devices and processes
    config.max_boxes = 100  # ground-truth boxes kept per image (the largest)
    config.shuffle_buffer = 2048
    config.match_iou_threshold = 0.5  # a default box is positive at IoU >= this with a ground-truth box
    config.neg_pos_ratio = 3.0  # hard negatives kept per positive
    config.zoom_out_probability = 0.5  # SSD's "expand" augmentation
    config.max_zoom_out = 4.0
    config.crop_probability = 1.0  # SSD's min-IoU crop sampler runs for every image
    config.photometric = True  # SSD's random brightness, contrast, saturation and hue
    config.num_steps = 120_000
    config.optimizer = "sgd"  # or "adam"
    config.learning_rate = 1e-3
    config.momentum = 0.9
    config.weight_decay = 5e-4
    config.warmup_steps = 1000  # linear warm-up, from warmup_start_factor * learning_rate
    config.warmup_start_factor = 0.01
    config.lr_schedule = "step"  # the paper's; or "cosine" (to zero at num_steps; lr_boundaries unused)
    config.lr_boundaries = (80_000, 100_000)
    config.lr_decay = 0.1
    config.grad_clip_norm = 0.0  # 0: no clipping
    config.compute_dtype = "float32"  # or "bfloat16" (parameters stay float32)
    # Leading blocks of the base network whose layers are frozen (no gradient, no update). -1: its
    # default when it starts from its ImageNet weights (VGG16: the paper's 2, conv1_1 .. conv2_2),
    # none from scratch.
    config.frozen_blocks = -1
    # Gradient rules of the convolutions and poolings: "auto" (the fastest measured on the device:
    # both of ssd_jax.models.fast_grads on CPU, its pooling rule on a GPU), "xla", "fast" or "fast_pool".
    config.gradients = "auto"
    # A BatchNorm before each ReLU of the base and extra layers while training, folded into the
    # convolutions for evaluation and the saved parameters: for training from scratch.
    config.batch_norm = False
    # Converted ImageNet weights of the model's base network (experiments/convert_weights.py
    # --format=vgg16, resnet50, mobilenet_v3_large: the base network's kind).
    config.init_backbone = ml_collections.config_dict.placeholder(str)
    config.seed = 0
    config.log_every = 50
    config.checkpoint_every = 2000
    config.keep_checkpoints = 3
    config.eval_every = 10_000  # 0: no evaluation during training
    config.eval_batch_size = 8
    return config


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def config_problems(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> list[str]:
    """Every problem of a training config, each naming the field and what it may be; [] if none."""
    problems = []
    known = default_config()
    for key in config.keys():
        if key not in known:
            close = difflib.get_close_matches(key, list(known.keys()), n=1)
            problems.append(f"{key}: not a training config field; " + (
                f"did you mean {close[0]}?" if close else f"the fields are {', '.join(sorted(known.keys()))}"))

    def check(field, ok, allowed):
        value = config.get(field)
        try:
            good = ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            problems.append(f"{field}={value!r}: must be {allowed}")

    def integer(low, high=None):
        return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)

    def number(low, high=None, *, low_open=False, high_open=False):
        def ok(v):
            if not _is_number(v) or not math.isfinite(v):
                return False
            above = v > low if low_open else v >= low
            below = high is None or (v < high if high_open else v <= high)
            return above and below
        return ok

    check("model", lambda v: v in configs.PRESETS, f"one of {sorted(configs.PRESETS)}")
    check("dataset", lambda v: v in sources.names(), f"one of {list(sources.names())}")
    for field, spec in sources.all_fields().items():
        if spec.default is None:
            check(field, lambda v: v is None or isinstance(v, str), "a path or None")
    check("class_names", lambda v: isinstance(v, (str, tuple, list)), "names separated by commas")
    if config.get("dataset") in sources.names():
        problems += sources.get(config.dataset).check(config)
    check("batch_size", integer(1), "an integer >= 1")
    if device_count and isinstance(config.get("batch_size"), int) and config.batch_size % device_count:
        problems.append(f"batch_size={config.batch_size}: must be a multiple of the {device_count} devices")
    check("max_boxes", integer(1), "an integer >= 1")
    check("match_iou_threshold", number(0, 1, low_open=True), "a number in (0, 1]")
    check("neg_pos_ratio", number(0), "a finite number >= 0")
    check("shuffle_buffer", integer(1), "an integer >= 1")
    check("zoom_out_probability", number(0, 1), "a probability in [0, 1]")
    check("max_zoom_out", number(1), "a number >= 1")
    check("crop_probability", number(0, 1), "a probability in [0, 1]")
    for flag in ("photometric", "batch_norm"):
        check(flag, lambda v: isinstance(v, bool), "True or False")
    check("num_steps", integer(1), "an integer >= 1")
    check("optimizer", lambda v: v in ("sgd", "adam"), "'sgd' or 'adam'")
    check("learning_rate", number(0, low_open=True), "a finite number > 0")
    check("momentum", number(0, 1, high_open=True), "a number in [0, 1)")
    check("weight_decay", number(0), "a finite number >= 0")
    check("warmup_steps", integer(0), "an integer >= 0")
    check("warmup_start_factor", number(0, 1, low_open=True), "a number in (0, 1]")
    check("lr_schedule", lambda v: v in ("step", "cosine"), "'step' or 'cosine'")
    check("lr_boundaries", lambda v: all(integer(1)(b) for b in v) and list(v) == sorted(v),
          "increasing step numbers >= 1")
    check("lr_decay", number(0, 1, low_open=True), "a number in (0, 1]")
    check("grad_clip_norm", number(0), "a finite number >= 0 (0: no clipping)")
    check("compute_dtype", lambda v: v in ("float32", "bfloat16"), "'float32' or 'bfloat16'")
    check("frozen_blocks", integer(-1), "-1 (the base network's default) or a number of blocks >= 0")
    if config.get("model") in configs.PRESETS and isinstance(config.get("frozen_blocks"), int):
        network = configs.get(config.model).base_network
        if config.frozen_blocks > network.max_frozen_blocks:
            problems.append(f"frozen_blocks={config.frozen_blocks}: {config.model}'s {network.kind} base network has "
                            f"{network.max_frozen_blocks} blocks that may be frozen; use -1 or 0.."
                            f"{network.max_frozen_blocks}")
    check("gradients", lambda v: v in ("auto", "xla", "fast", "fast_pool"), "'auto', 'xla', 'fast' or 'fast_pool'")
    check("init_backbone", lambda v: v is None or isinstance(v, str), "a converted ImageNet backbone or None")
    check("seed", integer(0), "an integer >= 0")
    check("log_every", integer(1), "an integer >= 1")
    check("checkpoint_every", integer(1), "an integer >= 1")
    check("keep_checkpoints", integer(1), "an integer >= 1")
    check("eval_every", integer(0), "an integer >= 0 (0: no evaluation during training)")
    check("eval_batch_size", integer(1), "an integer >= 1")
    return problems


def validate_config(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raises ``ConfigError`` listing every problem of ``config`` (see ``config_problems``)."""
    problems = config_problems(config, device_count=device_count)
    if problems:
        raise ConfigError("invalid training config:\n  " + "\n  ".join(problems))
