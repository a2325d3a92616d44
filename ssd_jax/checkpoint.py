"""The one place that talks to orbax: parameter checkpoints with their config.

A parameter checkpoint is a directory with ``config.json`` (the ``SSDConfig``, or other metadata)
and ``params/`` (an orbax PyTree checkpoint). orbax writes ``params/`` to a temporary name and
renames it when complete, and ``config.json`` is replaced atomically, so an interrupted save
never leaves a checkpoint that loads.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ssd_jax import configs
from ssd_jax.configs import SSDConfig
from ssd_jax.models.ssd import check_params, param_shapes

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def _write_json_atomically(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def save_params(directory: str | os.PathLike, params, config: SSDConfig | None = None, *,
                metadata: dict | None = None, overwrite: bool = False) -> str:
    """Writes ``params`` (and ``config`` or free-form ``metadata``) to ``directory``; returns it."""
    directory = os.path.abspath(os.fspath(directory))
    params_dir = os.path.join(directory, PARAMS_DIR)
    if os.path.exists(params_dir) and not overwrite:
        raise FileExistsError(f"{directory} already holds a checkpoint; pass overwrite=True to replace it")
    os.makedirs(directory, exist_ok=True)
    payload = {"config": configs.to_dict(config) if config is not None else None, **(metadata or {})}
    _write_json_atomically(os.path.join(directory, CONFIG_FILE), payload)
    params = jax.tree.map(np.asarray, params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(params_dir, params, force=overwrite)
        checkpointer.wait_until_finished()
    return directory


def load_metadata(directory: str | os.PathLike) -> dict:
    """The ``config.json`` payload of a parameter checkpoint."""
    directory = os.path.abspath(os.fspath(directory))
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isdir(os.path.join(directory, PARAMS_DIR)) or not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{directory} is not a complete ssd_jax parameter checkpoint (needs {CONFIG_FILE} and "
            f"{PARAMS_DIR}/); write one with experiments/convert_weights.py or training")
    with open(config_path) as f:
        return json.load(f)


def load_params(directory: str | os.PathLike, config: SSDConfig | None = None) -> tuple[dict, SSDConfig]:
    """Restores ``(params, config)``; ``config`` defaults to the one stored with the checkpoint.

    The restored tree is checked against the config's parameter shapes.
    """
    directory = os.path.abspath(os.fspath(directory))
    stored = load_metadata(directory).get("config")
    if config is None:
        if stored is None:
            raise ValueError(f"{directory} stores no model config; pass config=...")
        config = configs.from_dict(stored)
    target = param_shapes(config)
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            params = checkpointer.restore(os.path.join(directory, PARAMS_DIR), target)
        except (ValueError, KeyError) as error:
            raise ValueError(f"the checkpoint in {directory} does not fit config {config.name!r}: {error}") from error
    check_params(params, config)  # orbax restores the stored shapes whatever the target says
    return params, config


def load_tree(directory: str | os.PathLike) -> dict:
    """Restores a parameter (sub)tree as saved, e.g. a converted VGG16 backbone."""
    directory = os.path.abspath(os.fspath(directory))
    load_metadata(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(directory, PARAMS_DIR))


class TrainCheckpoints:
    """Training checkpoints: the train state plus JSON metadata (data position, config), kept
    for the last ``keep`` saves, written asynchronously by orbax's ``CheckpointManager``.

    orbax writes each step under a temporary name and renames it when complete, so an
    interrupted save is never listed; a checkpoint that fails to restore (corrupt files) is
    skipped with a warning in favour of the one before it.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, asynchronous: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=asynchronous)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state, metadata: dict, *, wait: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(metadata)), force=True)
        if wait:
            self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state) -> tuple[object, dict] | None:
        """(state, metadata) of the newest checkpoint that restores, or None if there is none.

        ``abstract_state``: the state's structure with ``jax.ShapeDtypeStruct`` leaves (with
        shardings, to restore straight onto the devices).
        """
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint: fall back
                logging.warning("checkpoint %d in %s does not restore (%s); trying an older one",
                                step, self.directory, error)
                continue
            return restored.state, restored.meta
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
