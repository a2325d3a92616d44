"""The training loop: ``train_and_evaluate(config, workdir)``, one main that reads top to bottom
in labelled sections (workdir, mesh, data and model, state, input, loop, outputs), with what a
person sees (progress bar, metric history, TensorBoard, pictures) in ``hooks``.

It runs the update step data-parallel over every device (``jax.jit`` with ``NamedSharding`` on a
('data',) mesh; several processes after ``jax.distributed.initialize()``), with asynchronous
orbax checkpoints, exact resumption, a NaN guard and periodic evaluation.
"""

from __future__ import annotations

import math
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssd_jax import configs
from ssd_jax import workdir as workdir_lib
from ssd_jax.checkpoint import CheckpointError, TrainCheckpoints
from ssd_jax.train import hooks
from ssd_jax.train.config import ConfigError, validate_config
from ssd_jax.train.devices import data_mesh, global_batch, host_copy, replicate, sync_processes
from ssd_jax.train.inputs import train_batches
from ssd_jax.train.interrupts import StopRequested, TrainingInterrupted
from ssd_jax.train.optim import frozen_blocks, frozen_prefixes, learning_rate_schedule, make_optimizer
from ssd_jax.train.step import abstract_state, inference_params, initial_state, jit_train_step, state_is_finite


class NonFiniteLossError(FloatingPointError):
    """The loss, gradient or parameters became NaN or infinite; the message names the step."""


class DataError(ValueError):
    """The data set cannot be read as configured: a missing folder or file, an empty split, ..."""


# Errors that the training scripts report as one line: the message says what to do.
USER_ERRORS = (NonFiniteLossError, ConfigError, DataError, workdir_lib.WorkdirError, CheckpointError)

_ADVICE = ("Lower the learning rate, lengthen the warm-up (warmup_steps), set grad_clip_norm, or check the boxes "
           "of the data.")


def open_data(config):
    """The training config's data set, opened (``sources.Source``); ``DataError`` if it cannot be."""
    from ssd_jax.data import sources

    try:
        return sources.open_source(config.dataset, **sources.source_options(config))
    except (ValueError, FileNotFoundError) as error:
        raise DataError(str(error)) from error


def open_data_on_every_process(config):
    """``open_data``, the data prepared by process 0 alone first (generated data sets are built once)."""
    if jax.process_index() == 0:
        source = open_data(config)
        source.prepare()
    sync_processes("data prepared")
    return source if jax.process_index() == 0 else open_data(config)


def model_metadata(source) -> dict:
    """What a saved model carries about its data: class names, the source's category ids, the data set."""
    return {"class_names": list(source.class_names), "dataset": source.name,
            "category_ids": None if source.category_ids is None else list(source.category_ids)}


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
            return _run(config, workdir, evaluate_fn=evaluate_fn, progress=progress)
    return _run(config, workdir, evaluate_fn=evaluate_fn, progress=progress)


def _run(config, workdir: str, *, evaluate_fn, progress: bool) -> dict:
    is_main = jax.process_index() == 0
    # --- the workdir holds this run and no other
    safe_changes = workdir_lib.check_same_run(workdir, config.to_dict())

    # --- mesh: the global batch split over every device of every process
    mesh = data_mesh()
    local_batch_size = config.batch_size // jax.process_count()

    # --- data and model: the model has the data set's classes
    source = open_data_on_every_process(config)
    if is_main and source.skipped:
        print(f"{source.name} ({source.where}): {len(source.class_names)} classes; {source.skipped}")
    model_config = configs.get(config.model, num_classes=source.num_classes)
    optimizer = make_optimizer(config)
    update = _update_step(config, model_config, optimizer, mesh)

    # --- state: restored from the latest checkpoint, or fresh
    checkpoints = TrainCheckpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    try:
        state, examples_seen = _restore_or_start(config, model_config, optimizer, mesh, checkpoints, workdir,
                                                 local_batch_size, safe_changes)
    except BaseException:
        checkpoints.close()
        raise
    if is_main:
        workdir_lib.record_run(workdir, config.to_dict())
    start_step = int(state.step)

    # --- input: each process reads its part of every global batch; resumes at the exact example
    batches = train_batches(config, source, model_config, start_step=start_step, examples_seen=examples_seen,
                            local_batch_size=local_batch_size)
    if evaluate_fn is None and config.eval_every:
        evaluate_fn = hooks.evaluator(config, model_config, source, workdir)
    report = hooks.Report(workdir, total=config.num_steps, start=start_step, progress=progress, enabled=is_main)

    # --- the loop
    last, pending, interrupted = {}, None, None  # pending: (step, loss, grad norm), checked a step late
    batch_sharding = NamedSharding(mesh, P("data"))
    try:
        with StopRequested() as stop:
            for step in range(start_step + 1, config.num_steps + 1):
                state, metrics = update(state, global_batch(next(batches), batch_sharding))
                examples_seen += local_batch_size
                if pending is not None:  # one step behind: the device never waits for this check
                    _check_finite(*jax.device_get(pending[1:]), step=pending[0])
                pending = (step, metrics["loss"], metrics["grad_norm"])
                # Decided once: a signal arriving later in this step is handled at the next one, so a
                # step that breaks out of the loop has always saved first.
                stopping = stop.should_stop(step)
                must_save = step % config.checkpoint_every == 0 or step == config.num_steps or stopping
                report.advance(config.batch_size)
                if step % config.log_every == 0 or must_save:
                    metrics = jax.device_get(metrics)
                    _check_finite(metrics["loss"], metrics["grad_norm"], step=step)  # before any save
                    last.update(report.log(step, metrics))
                if must_save:
                    _save(checkpoints, state, step, {"step": step, "examples_seen_per_process": examples_seen,
                                                     "config": config.to_dict()}, wait=stopping)
                if stopping:
                    interrupted = TrainingInterrupted(step, stop.signal or signal.SIGTERM, checkpoints.directory)
                    break
                if evaluate_fn is not None and config.eval_every and (
                        step % config.eval_every == 0 or step == config.num_steps):
                    last.update(report.evaluated(step, evaluate_fn(host_copy(inference_params(state)), step)))
    finally:  # also on errors (a NaN loss): finish the asynchronous saves of good checkpoints
        report.close()
        checkpoints.close()
    if interrupted is not None:
        raise interrupted

    # --- outputs: the final parameters (for detect, evaluate.py, export) and the training curve
    final_params = host_copy(inference_params(state))
    if is_main:
        hooks.write_final_outputs(workdir, final_params, model_config, model_metadata(source))
    sync_processes("params written")  # nobody reads params/ before it is complete
    return last


def _update_step(config, model_config, optimizer, mesh):
    """The jitted update step of the training config."""
    return jit_train_step(model_config, optimizer, learning_rate_schedule(config), mesh,
                          jnp.dtype(config.compute_dtype), frozen=frozen_prefixes(model_config, frozen_blocks(config)),
                          gradients=config.gradients,
                          match_iou_threshold=config.match_iou_threshold, neg_pos_ratio=config.neg_pos_ratio)


def _save(checkpoints, state, step: int, metadata: dict, *, wait: bool) -> None:
    """A checkpoint of ``state`` at ``step``. The loss is checked one step late in the loop; the state
    after this step's update is checked here, so that no checkpoint ever holds a non-finite value."""
    if not bool(state_is_finite(state)):
        raise NonFiniteLossError(f"the parameters or optimizer state became NaN or infinite at step {step}; nothing "
                                 f"was saved and the last good checkpoint is kept. {_ADVICE}")
    checkpoints.save(step, state, metadata, wait=wait)


def _restore_or_start(config, model_config, optimizer, mesh, checkpoints, workdir, local_batch_size, safe_changes):
    """(state on the mesh, examples each process has read): from the latest checkpoint that
    restores, else fresh; the history logged past the restored step is dropped."""
    is_main = jax.process_index() == 0
    replicated = NamedSharding(mesh, P())
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                            abstract_state(config, model_config, optimizer))
    restored = checkpoints.restore_latest(abstract)
    if restored is None:
        if is_main:
            workdir_lib.truncate_history(workdir, 0)  # a run killed before its first save starts again
        if config.get("init_backbone"):
            logging.info("base network initialised from %s", config.init_backbone)
        return replicate(initial_state(config, model_config, optimizer), mesh), 0
    state, meta = restored
    logging.info("resumed from step %d of %s", meta["step"], checkpoints.directory)
    if is_main:
        print(f"resuming from step {meta['step']} of {checkpoints.directory}"
              + (f" (changed: {'; '.join(safe_changes)})" if safe_changes else ""))
        dropped = workdir_lib.truncate_history(workdir, int(meta["step"]))
        if dropped:
            print(f"dropped {dropped} metric records of steps after {meta['step']} (written before the last stop, "
                  f"never saved)")
    return state, int(meta.get("examples_seen_per_process", meta["step"] * local_batch_size))


def _check_finite(loss, grad_norm, *, step: int) -> None:
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise NonFiniteLossError(
            f"the loss became {loss} (gradient norm {grad_norm}) at step {step}; training stopped and the last good "
            f"checkpoint is kept. {_ADVICE}")


def restore_train_state(workdir: str, config: ml_collections.ConfigDict):
    """The latest (state, metadata) in ``workdir``'s checkpoints, on the host; None if none."""
    model_config = configs.get(config.model, num_classes=open_data(config).num_classes)
    abstract = abstract_state(config, model_config, make_optimizer(config))
    checkpoints = TrainCheckpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    try:
        return checkpoints.restore_latest(abstract)
    finally:
        checkpoints.close()
