"""The optimizer: the learning-rate schedule, SGD or Adam with Caffe-style weight decay, gradient
clipping, and the base network's frozen blocks."""

from __future__ import annotations

import jax
import ml_collections
import optax

from ssd_jax import configs


def weight_decay_mask(params):
    """True for conv kernels; biases and the L2Norm scale get no weight decay (as in Caffe)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def frozen_blocks(config: ml_collections.ConfigDict) -> int:
    """The number of leading base-network blocks that ``config`` freezes; -1 resolves to the base
    network's default when training starts from its ImageNet weights (VGG16: the paper's 2,
    conv1_1 .. conv2_2), else 0."""
    blocks = int(config.get("frozen_blocks", 0))
    if blocks < 0:
        network = configs.get(config.get("model", "ssd300")).base_network
        return network.imagenet_frozen_blocks if config.get("init_backbone") else 0
    return blocks


def frozen_prefixes(model_config: configs.SSDConfig, blocks: int) -> tuple[str, ...]:
    """The names (prefixes, under ``backbone``) of the parameters of the first ``blocks`` blocks of
    ``model_config``'s base network, as the network declares them."""
    network = model_config.base_network
    if not blocks or network.block_prefixes is None:
        return ()
    return tuple(network.block_prefixes(model_config.backbone, blocks))


def frozen_mask(params, prefixes: tuple[str, ...]):
    """True for the parameters of the base network's layers whose names start with one of
    ``prefixes`` (``frozen_prefixes``), their BatchNorms included."""

    def frozen(path, _):
        keys = [getattr(entry, "key", None) for entry in path]
        return bool(prefixes) and len(keys) > 1 and keys[0] == "backbone" and str(keys[1]).startswith(prefixes)

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
    prefixes = frozen_prefixes(configs.get(config.get("model", "ssd300")), frozen_blocks(config))

    def decay_mask(params):
        frozen = frozen_mask(params, prefixes)
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
    if prefixes:
        parts.append(optax.masked(optax.set_to_zero(), lambda params: frozen_mask(params, prefixes)))
    return optax.chain(*parts)
