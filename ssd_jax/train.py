"""Training: the train state, the optimizer, a pure ``train_step`` and the training loop.

``train_step(state, batch)`` is one jitted program: model -> matching on device -> multibox loss
-> optax update. ``train_and_evaluate(config, workdir)`` runs it data-parallel over every device
(``jax.jit`` with ``NamedSharding`` on a ('data',) mesh; multi-host after
``jax.distributed.initialize()``), with asynchronous orbax checkpoints, exact resumption, a NaN
guard, TensorBoard scalars and periodic evaluation.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssd_jax import configs, weights
from ssd_jax import workdir as workdir_lib
from ssd_jax.checkpoint import CheckpointError, TrainCheckpoints, load_tree, save_params
from ssd_jax.configs import SSDConfig
from ssd_jax.losses import multibox_loss
from ssd_jax.matching import match_batch
from ssd_jax.models import SSD, fold_batch_norm, init, init_batch_norm, param_shapes
from ssd_jax.models.fast_grads import training_gradients
from ssd_jax.models.ssd import variable_shapes
from ssd_jax.priors import priors


class NonFiniteLossError(FloatingPointError):
    """The loss, gradient or parameters became NaN or infinite; the message names the step."""


class ConfigError(ValueError):
    """The training config has invalid fields; the message lists every one."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after it saved; running the same command resumes."""

    def __init__(self, step: int, signum: int, directory: str):
        self.step, self.signum, self.directory = step, signum, directory
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} at step {step}, saved to {directory}; run the same command "
                         f"to resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class DataError(ValueError):
    """The data set cannot be read as configured: a missing folder or file, an empty split, ..."""


# Errors that the training scripts report as one line: the message says what to do.
USER_ERRORS = (NonFiniteLossError, ConfigError, DataError, workdir_lib.WorkdirError, CheckpointError)


def sync_processes(name: str) -> None:
    """Waits until every process gets here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def host_copy(tree):
    """This process's numpy copy of a replicated pytree (works for arrays spread over processes)."""
    return jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)) if isinstance(leaf, jax.Array)
                        else np.asarray(leaf), tree)


def open_data_on_every_process(config):
    """``open_data``, the data prepared by process 0 alone first (generated data sets are built once)."""
    if jax.process_index() == 0:
        source = open_data(config)
        source.prepare()
    sync_processes("data prepared")
    return source if jax.process_index() == 0 else open_data(config)


def open_data(config):
    """The training config's data set, opened (``pipeline.Source``); ``DataError`` if it cannot be."""
    from ssd_jax.data import pipeline

    try:
        return pipeline.open_source(config.dataset, **pipeline.source_options(config))
    except (ValueError, FileNotFoundError) as error:
        raise DataError(str(error)) from error


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any
    opt_state: Any
    batch_stats: Any  # running BatchNorm statistics when training with batch_norm, else {}


# ----------------------------------------------------------------------------- config
def default_config() -> ml_collections.ConfigDict:
    """The paper's SSD300 VOC07+12 recipe (batch 32, 120k steps, lr 1e-3 x0.1 at 80k and 100k)."""
    config = ml_collections.ConfigDict()
    config.model = "ssd300"  # a preset of ssd_jax.configs; num_classes comes from the data set
    # A TFDS data set of ssd_jax.data.pipeline.DATASETS, or your own on disk: 'vocdir' (a VOC folder
    # or VOCdevkit in data_dir) or 'cocojson' (the four paths below).
    config.dataset = "voc"
    config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data directory, or the VOC folder
    config.train_annotations = ml_collections.config_dict.placeholder(str)  # cocojson: instances json
    config.train_images = ml_collections.config_dict.placeholder(str)  # cocojson: its image folder
    config.eval_annotations = ml_collections.config_dict.placeholder(str)
    config.eval_images = ml_collections.config_dict.placeholder(str)
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
    # VGG blocks whose layers are frozen (no gradient, no update). -1: the paper's choice, the first
    # 2 (conv1_1 .. conv2_2) when the backbone is a converted ImageNet VGG16, none from scratch.
    config.frozen_blocks = -1
    # Gradient rules of the convolutions and poolings: "auto" (the fastest measured on the device:
    # both of ssd_jax.models.fast_grads on CPU, its pooling rule on a GPU), "xla", "fast" or "fast_pool".
    config.gradients = "auto"
    # A BatchNorm before each ReLU of the base and extra layers while training, folded into the
    # convolutions for evaluation and the saved parameters: for training from scratch.
    config.batch_norm = False
    # A converted ImageNet backbone of the model's kind (experiments/convert_weights.py
    # --format=vgg16, resnet50 or mobilenet_v3_large).
    config.init_backbone = ml_collections.config_dict.placeholder(str)
    config.seed = 0
    config.log_every = 50
    config.checkpoint_every = 2000
    config.keep_checkpoints = 3
    config.eval_every = 10_000  # 0: no evaluation during training
    config.eval_batch_size = 8
    return config


# ----------------------------------------------------------------------------- config checks
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def config_problems(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> list[str]:
    """Every problem of a training config, each naming the field and what it may be; [] if none."""
    from ssd_jax.data import pipeline

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
    check("dataset", lambda v: v in pipeline.DATASET_NAMES, f"one of {list(pipeline.DATASET_NAMES)}")
    for field in ("data_dir", "train_annotations", "train_images", "eval_annotations", "eval_images"):
        check(field, lambda v: v is None or isinstance(v, str), "a path or None")
    check("class_names", lambda v: isinstance(v, (str, tuple, list)), "names separated by commas")
    if config.get("dataset") == "vocdir" and not config.get("data_dir"):
        problems.append("data_dir=None: the vocdir data set reads the VOC folder named by data_dir")
    if config.get("dataset") == "cocojson":
        for field in ("train_annotations", "train_images", "eval_annotations", "eval_images"):
            if not config.get(field):
                problems.append(f"{field}=None: the cocojson data set needs it")
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
    check("frozen_blocks", integer(-1, 5), "-1 (the paper's choice) or 0 to 5")
    if config.get("model") in configs.PRESETS and isinstance(config.get("frozen_blocks"), int):
        backbone = configs.get(config.model).backbone
        if backbone != "vgg16" and config.frozen_blocks > 0:
            problems.append(f"frozen_blocks={config.frozen_blocks}: freezes VGG16 blocks, but {config.model} has the "
                            f"{backbone} backbone; use -1 or 0")
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


# ----------------------------------------------------------------------------- optimizer
def weight_decay_mask(params):
    """True for conv kernels; biases and the L2Norm scale get no weight decay (as in Caffe)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


PAPER_FROZEN_BLOCKS = 2  # the reference SSD freezes conv1_1 .. conv2_2 of its ImageNet VGG16


def frozen_blocks(config: ml_collections.ConfigDict) -> int:
    """The number of leading VGG blocks that ``config`` freezes (resolves -1, the paper's choice:
    conv1-conv2 of an ImageNet VGG16; nothing for the other backbones, trained whole)."""
    blocks = int(config.get("frozen_blocks", 0))
    if blocks < 0:
        vgg = configs.get(config.get("model", "ssd300")).backbone == "vgg16"
        return PAPER_FROZEN_BLOCKS if config.get("init_backbone") and vgg else 0
    return blocks


def frozen_mask(params, blocks: int):
    """True for the parameters of backbone layers conv1_* .. conv{blocks}_* (and their BatchNorms)."""
    prefixes = tuple(f"conv{block}_" for block in range(1, blocks + 1))

    def frozen(path, _):
        keys = [getattr(entry, "key", None) for entry in path]
        return bool(blocks) and len(keys) > 1 and keys[0] == "backbone" and str(keys[1]).startswith(prefixes)

    return jax.tree_util.tree_map_with_path(frozen, params)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then the paper's step decay (x ``lr_decay`` at each of
    ``lr_boundaries``) or, with ``lr_schedule='cosine'``, a cosine decay to zero at ``num_steps``."""
    warmup_steps = int(config.warmup_steps)
    kind = config.get("lr_schedule", "step")
    if kind == "step":
        # join_schedules counts the second schedule's steps from the join: shift its boundaries.
        decay = optax.piecewise_constant_schedule(
            config.learning_rate, {int(b) - warmup_steps: config.lr_decay for b in config.lr_boundaries})
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(config.learning_rate, max(int(config.num_steps) - warmup_steps, 1))
    else:
        raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {kind!r}")
    if not warmup_steps:
        return decay
    warmup = optax.linear_schedule(config.learning_rate * config.warmup_start_factor, config.learning_rate,
                                   config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD with momentum (the paper's) or Adam, weight decay added to the gradient (Caffe style,
    kernels only), optional global-norm clipping; frozen layers (``frozen_blocks``) get no update."""
    parts = []
    if config.get("grad_clip_norm"):
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    blocks = frozen_blocks(config)

    def decay_mask(params):
        frozen = frozen_mask(params, blocks)
        return jax.tree.map(lambda kernel, is_frozen: kernel and not is_frozen, weight_decay_mask(params), frozen)

    parts.append(optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
    schedule = learning_rate_schedule(config)
    name = config.get("optimizer", "sgd")
    if name == "sgd":
        parts.append(optax.sgd(schedule, momentum=config.momentum))
    elif name == "adam":  # trains small models from scratch faster (no ImageNet backbone)
        parts.append(optax.adam(schedule))
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
    if blocks:
        parts.append(optax.masked(optax.set_to_zero(), lambda params: frozen_mask(params, blocks)))
    return optax.chain(*parts)


def create_train_state(params, optimizer: optax.GradientTransformation, batch_stats=None) -> TrainState:
    """A fresh state; ``batch_stats`` (from ``init_batch_norm``) makes train_step use BatchNorm."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      batch_stats={} if batch_stats is None else batch_stats)


def uses_batch_norm(state: TrainState) -> bool:
    return bool(jax.tree.leaves(state.batch_stats))


def inference_params(state: TrainState):
    """The parameters of the plain model (``detect``, checkpoints): BatchNorms folded in."""
    return fold_batch_norm(state.params, state.batch_stats) if uses_batch_norm(state) else state.params


# ----------------------------------------------------------------------------- the update step
def train_step(state: TrainState, batch: dict, *, model_config: SSDConfig, optimizer, schedule,
               compute_dtype=jnp.float32, frozen: int = 0, gradients: str = "xla", match_iou_threshold: float = 0.5,
               neg_pos_ratio: float = 3.0) -> tuple[TrainState, dict]:
    """One SGD step on a batch -> (new state, metrics).

    Args:
      batch: image uint8 [B, S, S, 3], boxes float32 [B, G, 4], labels int32 [B, G], mask [B, G].
      frozen: leading VGG blocks without gradient: XLA then skips their whole backward pass.
      gradients: the model's gradient rules (``ssd_jax.models.fast_grads``).
      match_iou_threshold, neg_pos_ratio: matching and hard negative mining (the paper's 0.5 and 3).
    Returns:
      metrics: scalars 'loss', 'loss/localization', 'loss/confidence', 'positives', 'negatives',
        'grad_norm', 'learning_rate'.
    """
    prior_boxes = jnp.asarray(priors(model_config))
    targets = match_batch(prior_boxes, batch["boxes"], batch["labels"], batch["mask"],
                          iou_threshold=match_iou_threshold, variances=model_config.variances)

    batch_norm = uses_batch_norm(state)
    model = SSD(model_config, dtype=compute_dtype, batch_norm=batch_norm, gradients=gradients)
    is_frozen = frozen_mask(state.params, frozen)

    def loss_fn(params):
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, is_frozen)
        if batch_norm:  # statistics of this (global) batch; the running ones are updated
            (locations, logits), updated = model.apply({"params": params, "batch_stats": state.batch_stats},
                                                       batch["image"], train=True, mutable=["batch_stats"])
            batch_stats = updated["batch_stats"]
        else:
            locations, logits = model.apply({"params": params}, batch["image"])
            batch_stats = state.batch_stats
        loss = multibox_loss(locations, logits, targets.locations, targets.labels, targets.positive,
                             neg_pos_ratio=neg_pos_ratio)
        return loss.total, (loss, batch_stats)

    (_, (loss, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss.total,
        "loss/localization": loss.localization,
        "loss/confidence": loss.confidence,
        "positives": loss.num_positives,
        "negatives": loss.num_negatives,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats), metrics


# ----------------------------------------------------------------------------- devices
def data_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-d ('data',) mesh over ``devices`` (default: every device of every process).

    The axis is ``Auto``: shardings are given at the jit boundary and XLA propagates them
    (``make_mesh`` defaults to ``Explicit`` axes, which would put shardings into every type).
    """
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh):
    """Places a pytree (the train state) on every device of ``mesh``, as the update step expects."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
    """This process's numpy batch -> global jax.Arrays sharded along the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def jit_train_step(model_config: SSDConfig, optimizer, schedule, mesh, compute_dtype=jnp.float32, *,
                   frozen: int = 0, gradients: str = "auto", match_iou_threshold: float = 0.5,
                   neg_pos_ratio: float = 3.0):
    """``train_step`` jitted for ``mesh``: state replicated, batch split; the state is donated.

    ``gradients="auto"``: the gradient rules that train fastest on the mesh's devices."""
    replicated = NamedSharding(mesh, P())
    if gradients == "auto":
        gradients = training_gradients(mesh.devices.flat[0].platform)
    step = functools.partial(train_step, model_config=model_config, optimizer=optimizer, schedule=schedule,
                             compute_dtype=compute_dtype, frozen=frozen, gradients=gradients,
                             match_iou_threshold=float(match_iou_threshold), neg_pos_ratio=float(neg_pos_ratio))
    return jax.jit(step, in_shardings=(replicated, NamedSharding(mesh, P("data"))),
                   out_shardings=(replicated, replicated), donate_argnums=0)


# ----------------------------------------------------------------------------- the loop
class _StopRequested:
    """Turns SIGTERM / SIGINT into a stop that the loop checks at each step, so that it saves
    before exiting. With several processes, all must stop at the same step: there SIGTERM is
    JAX's preemption notice (passed to every process, which agree on the step to stop at), and
    SIGINT is turned into one."""

    def __init__(self):
        self.signal = None
        self._previous = {}
        self.multi_process = jax.process_count() > 1

    def __enter__(self):
        signals = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.signal = signum
        if self.multi_process:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (the same answer on every process)."""
        if not self.multi_process:
            return self.signal is not None
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            self.signal = self.signal or signal.SIGTERM
            return True
        return False

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_ADVICE = ("Lower the learning rate, lengthen the warm-up (warmup_steps), set grad_clip_norm, or check the boxes "
           "of the data.")


def _check_finite(metrics: dict, step: int) -> None:
    if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
        raise NonFiniteLossError(
            f"the loss became {metrics['loss']} (gradient norm {metrics['grad_norm']}) at step {step}; training "
            f"stopped and the last good checkpoint is kept. {_ADVICE}")


@jax.jit
def state_is_finite(state: TrainState) -> jax.Array:
    """True iff every parameter, optimizer value and BatchNorm statistic is finite (bool [])."""
    leaves = [leaf for leaf in jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
              if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def initial_state(config, model_config: SSDConfig, optimizer) -> TrainState:
    """Step 0: fresh parameters (or a converted backbone), with BatchNorms if ``config.batch_norm``."""
    params = init(jax.random.key(config.seed), model_config)
    if config.get("init_backbone"):
        params = weights.merge_backbone(params, load_tree(config.init_backbone))
        logging.info("backbone initialised from %s", config.init_backbone)
    batch_stats = None
    if config.get("batch_norm"):
        params, batch_stats = init_batch_norm(params, model_config)
    return create_train_state(params, optimizer, batch_stats)


def abstract_state(config, model_config: SSDConfig, optimizer) -> TrainState:
    """The shapes and dtypes of ``initial_state`` (what a checkpoint is restored into)."""
    if config.get("batch_norm"):
        variables = variable_shapes(model_config, batch_norm=True)
        shapes = (variables["params"], variables["batch_stats"])
    else:
        shapes = (param_shapes(model_config), None)
    return jax.eval_shape(lambda params, stats: create_train_state(params, optimizer, stats), *shapes)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, evaluate_fn=None,
                       progress: bool = True) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and returns the last
    metrics, including evaluation ones when ``eval_every`` > 0.

    Before anything is written: the config is checked (``ConfigError``), the workdir must be
    writable, free (its lock) and hold no other run (``WorkdirError``). SIGINT / SIGTERM save and
    raise ``TrainingInterrupted``. ``evaluate_fn(params, step) -> dict`` overrides the built-in
    evaluation (tests use it).
    """
    validate_config(config, device_count=jax.device_count())
    workdir_lib.check_writable(workdir)
    if jax.process_index() == 0:
        with workdir_lib.locked(workdir):
            return _train_and_evaluate(config, workdir, evaluate_fn=evaluate_fn, progress=progress)
    return _train_and_evaluate(config, workdir, evaluate_fn=evaluate_fn, progress=progress)


def _train_and_evaluate(config, workdir: str, *, evaluate_fn, progress: bool) -> dict:
    from ssd_jax.data import pipeline  # TensorFlow is imported only by code that trains

    is_main = jax.process_index() == 0
    safe_changes = workdir_lib.check_same_run(workdir, config.to_dict())

    # --- mesh and batch sizes
    mesh = data_mesh()
    local_batch_size = config.batch_size // jax.process_count()
    batch_sharding = NamedSharding(mesh, P("data"))

    # --- data and model: the model has the data set's classes
    source = open_data_on_every_process(config)
    if is_main and source.skipped:
        print(f"{source.name} ({source.where}): {len(source.class_names)} classes; {source.skipped}")
    model_config = configs.get(config.model, num_classes=source.num_classes)
    optimizer = make_optimizer(config)
    schedule = learning_rate_schedule(config)
    compute_dtype = jnp.dtype(config.compute_dtype)
    update = jit_train_step(model_config, optimizer, schedule, mesh, compute_dtype, frozen=frozen_blocks(config),
                            gradients=config.gradients, match_iou_threshold=config.match_iou_threshold,
                            neg_pos_ratio=config.neg_pos_ratio)

    # --- state: restored from the latest checkpoint, or fresh
    checkpoints = TrainCheckpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    try:
        replicated = NamedSharding(mesh, P())
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                                abstract_state(config, model_config, optimizer))
        restored = checkpoints.restore_latest(abstract)
    except BaseException:
        checkpoints.close()
        raise
    if restored is not None:
        state, meta = restored
        examples_seen = int(meta.get("examples_seen_per_process", meta["step"] * local_batch_size))
        logging.info("resumed from step %d of %s", meta["step"], checkpoints.directory)
        if is_main:
            print(f"resuming from step {meta['step']} of {checkpoints.directory}"
                  + (f" (changed: {'; '.join(safe_changes)})" if safe_changes else ""))
            dropped = workdir_lib.truncate_history(workdir, int(meta["step"]))
            if dropped:
                print(f"dropped {dropped} metric records of steps after {meta['step']} (written before the last "
                      f"stop, never saved)")
    else:
        state = replicate(initial_state(config, model_config, optimizer), mesh)
        examples_seen = 0
        if is_main:
            workdir_lib.truncate_history(workdir, 0)  # a run killed before its first save starts again
    if is_main:
        workdir_lib.record_run(workdir, config.to_dict())
    start_step = int(state.step)

    # --- input: each process reads its part of every global batch; resumes at the exact example
    augment_options = {"zoom_out_probability": config.zoom_out_probability, "max_zoom_out": config.max_zoom_out,
                       "crop_probability": config.crop_probability, "photometric": config.get("photometric", True)}
    indexed = source.indexed("train")
    if indexed is not None:  # the global order: the same global batches on any cluster
        batches = pipeline.as_numpy(pipeline.global_train_dataset(
            indexed, global_batch_size=config.batch_size, image_size=model_config.image_size,
            max_boxes=config.max_boxes, seed=config.seed, start_step=start_step, process_index=jax.process_index(),
            process_count=jax.process_count(), use_difficult=source.train_on_difficult,
            augment_options=augment_options))
    else:  # TFRecord data, read in order: each process reads its own files
        if jax.process_count() > 1 and is_main:
            print(f"note: {source.name} is stored as TFRecord files, read in order: each process reads its own part "
                  f"of the split, so the global batches depend on the number of processes. Prepared as ArrayRecord "
                  f"(tfds build ... --file_format=array_record) they would not.")
        examples = source.examples("train", process_index=jax.process_index(), process_count=jax.process_count(),
                                   shuffle_files=True, decode=False)
        batches = pipeline.as_numpy(pipeline.train_dataset(
            examples, batch_size=local_batch_size, image_size=model_config.image_size, max_boxes=config.max_boxes,
            seed=config.seed, shuffle_buffer=config.shuffle_buffer, start_index=examples_seen,
            augment_options=augment_options))

    # --- evaluation
    if evaluate_fn is None and config.eval_every:
        evaluate_fn = _default_evaluator(config, model_config, source, workdir)

    # --- logging: metrics.jsonl and TensorBoard, by process 0
    log = workdir_lib.MetricLog(workdir) if is_main else (lambda step, scalars: None)

    def save(step, wait=False):
        # The NaN guard above checks the loss of the step before; the state after this step's
        # update is checked here, so that no checkpoint ever holds a non-finite value.
        if not bool(state_is_finite(state)):
            raise NonFiniteLossError(f"the parameters or optimizer state became NaN or infinite at step {step}; "
                                     f"nothing was saved and the last good checkpoint is kept. {_ADVICE}")
        checkpoints.save(step, state, {"step": step, "examples_seen_per_process": examples_seen,
                                       "config": config.to_dict()}, wait=wait)

    last = {}
    pending = None  # (step, loss, grad norm) of the previous step, checked while this one runs
    interrupted = None
    window_start, window_images = time.perf_counter(), 0
    bar = tqdm.tqdm(total=config.num_steps, initial=start_step, desc="training", unit="step",
                    disable=not (progress and is_main), dynamic_ncols=True)
    try:
        with _StopRequested() as stop:
            for step in range(start_step + 1, config.num_steps + 1):
                state, metrics = update(state, global_batch(next(batches), batch_sharding))
                examples_seen += local_batch_size
                window_images += config.batch_size
                if pending is not None:  # one step behind: the device never waits for this check
                    _check_finite(dict(zip(("loss", "grad_norm"), jax.device_get(pending[1:]))), pending[0])
                pending = (step, metrics["loss"], metrics["grad_norm"])
                # Decide once: a signal arriving later in this step is handled at the next one,
                # so a step that breaks out of the loop has always saved first.
                stopping = stop.should_stop(step)
                must_save = step % config.checkpoint_every == 0 or step == config.num_steps or stopping
                if step % config.log_every == 0 or must_save:
                    metrics = jax.device_get(metrics)
                    _check_finite(metrics, step)  # before any save: a NaN state is never checkpointed
                    elapsed = time.perf_counter() - window_start
                    metrics["images_per_second"] = window_images / elapsed
                    window_start, window_images = time.perf_counter(), 0
                    log(step, metrics)
                    last.update(metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['learning_rate']:.2g}",
                                    img_s=f"{metrics['images_per_second']:.0f}")
                bar.update(1)
                if must_save:
                    save(step, wait=stopping)
                if stopping:
                    interrupted = TrainingInterrupted(step, stop.signal or signal.SIGTERM, checkpoints.directory)
                    break
                if evaluate_fn is not None and config.eval_every and (step % config.eval_every == 0
                                                                      or step == config.num_steps):
                    results = evaluate_fn(host_copy(inference_params(state)), step)
                    log(step, results)
                    last.update(results)
    finally:  # also on errors (a NaN loss): finish the asynchronous saves of good checkpoints
        bar.close()
        checkpoints.close()
    if interrupted is not None:
        raise interrupted
    final_params = host_copy(inference_params(state))
    if is_main:
        from ssd_jax.evaluation import plots

        # The latest parameters, ready for detect / evaluate.py / detect_images.py, with the class names.
        save_params(os.path.join(workdir, "params"), final_params, model_config, metadata=model_metadata(source),
                    overwrite=True)
        plots.plot_training_curve(os.path.join(workdir, workdir_lib.HISTORY_FILE),
                                  os.path.join(workdir, "training_curve.png"))
    sync_processes("params written")  # nobody reads params/ before it is complete
    return last


def restore_train_state(workdir: str, config: ml_collections.ConfigDict) -> tuple[TrainState, dict] | None:
    """The latest (state, metadata) in ``workdir``'s checkpoints, on the host; None if none."""

    model_config = configs.get(config.model, num_classes=open_data(config).num_classes)
    abstract = abstract_state(config, model_config, make_optimizer(config))
    checkpoints = TrainCheckpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    try:
        return checkpoints.restore_latest(abstract)
    finally:
        checkpoints.close()


def model_metadata(source) -> dict:
    """What a saved model carries about its data: class names, the source's category ids, the data set."""
    return {"class_names": list(source.class_names), "dataset": source.name,
            "category_ids": None if source.category_ids is None else list(source.category_ids)}


def _default_evaluator(config, model_config: SSDConfig, source, workdir: str):
    """Evaluates on the data set's evaluation split; writes the AP picture of each evaluation."""
    from ssd_jax.evaluation import datasets as evaluation
    from ssd_jax.evaluation import plots

    def evaluate(params, step):
        metrics, evaluator, _, _ = evaluation.evaluate_split(params, model_config, source,
                                                             batch_size=config.eval_batch_size)
        per_class = {name: metrics[f"AP/{name}"] for name in evaluator.class_names}
        plots.plot_class_ap(per_class, os.path.join(workdir, "class_ap.png"), mean_ap=metrics["voc_mAP"],
                            title=f"step {step}, all-point AP")
        logging.info("step %d: VOC07 mAP %.4f, VOC mAP %.4f", step, metrics["voc07_mAP"], metrics["voc_mAP"])
        return {k: v for k, v in metrics.items() if np.isfinite(v)}

    return evaluate
