"""The train state and the update step: ``train_step(state, batch) -> (state, metrics)``, one pure
function (model -> matching -> multibox loss -> optax update), jitted for a mesh by
``jit_train_step``."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssd_jax import weights
from ssd_jax.checkpoint import load_tree
from ssd_jax.configs import SSDConfig
from ssd_jax.losses import multibox_loss
from ssd_jax.matching import match_batch
from ssd_jax.models import SSD, fold_batch_norm, init, init_batch_norm, param_shapes
from ssd_jax.models.fast_grads import training_gradients
from ssd_jax.models.ssd import variable_shapes
from ssd_jax.priors import priors
from ssd_jax.train.optim import frozen_mask


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any
    opt_state: Any
    batch_stats: Any  # running BatchNorm statistics when training with batch_norm, else {}


def create_train_state(params, optimizer: optax.GradientTransformation, batch_stats=None) -> TrainState:
    """A fresh state; ``batch_stats`` (from ``init_batch_norm``) makes train_step use BatchNorm."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      batch_stats={} if batch_stats is None else batch_stats)


def uses_batch_norm(state: TrainState) -> bool:
    return bool(jax.tree.leaves(state.batch_stats))


def inference_params(state: TrainState):
    """The parameters of the plain model (``detect``, checkpoints): BatchNorms folded in."""
    return fold_batch_norm(state.params, state.batch_stats) if uses_batch_norm(state) else state.params


def initial_state(config, model_config: SSDConfig, optimizer) -> TrainState:
    """Step 0: fresh parameters (or a converted backbone), with BatchNorms if ``config.batch_norm``."""
    params = init(jax.random.key(config.seed), model_config)
    if config.get("init_backbone"):
        params = weights.merge_backbone(params, load_tree(config.init_backbone))
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


@jax.jit
def state_is_finite(state: TrainState) -> jax.Array:
    """True iff every parameter, optimizer value and BatchNorm statistic is finite (bool [])."""
    leaves = [leaf for leaf in jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
              if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def train_step(state: TrainState, batch: dict, *, model_config: SSDConfig, optimizer, schedule,
               compute_dtype=jnp.float32, frozen: tuple[str, ...] = (), gradients: str = "xla",
               match_iou_threshold: float = 0.5, neg_pos_ratio: float = 3.0) -> tuple[TrainState, dict]:
    """One SGD step on a batch -> (new state, metrics).

    Args:
      batch: image uint8 [B, S, S, 3], boxes float32 [B, G, 4], labels int32 [B, G], mask [B, G].
      frozen: the base network's layers without gradient (``optim.frozen_prefixes``): XLA then
        skips their whole backward pass.
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


def jit_train_step(model_config: SSDConfig, optimizer, schedule, mesh, compute_dtype=jnp.float32, *,
                   frozen: tuple[str, ...] = (), gradients: str = "auto", match_iou_threshold: float = 0.5,
                   neg_pos_ratio: float = 3.0):
    """``train_step`` jitted for ``mesh``: state replicated, batch split; the state is donated.

    ``gradients="auto"``: the gradient rules that train fastest on the mesh's devices."""
    replicated = NamedSharding(mesh, P())
    if gradients == "auto":
        gradients = training_gradients(mesh.devices.flat[0].platform)
    step = functools.partial(train_step, model_config=model_config, optimizer=optimizer, schedule=schedule,
                             compute_dtype=compute_dtype, frozen=tuple(frozen), gradients=gradients,
                             match_iou_threshold=float(match_iou_threshold), neg_pos_ratio=float(neg_pos_ratio))
    return jax.jit(step, in_shardings=(replicated, NamedSharding(mesh, P("data"))),
                   out_shardings=(replicated, replicated), donate_argnums=0)
