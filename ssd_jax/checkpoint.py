"""The one place that talks to orbax: parameter checkpoints with their config, training checkpoints.

A parameter checkpoint is a directory with ``config.json`` (the ``SSDConfig``, or other metadata)
and ``params/`` (an orbax PyTree checkpoint). A save writes the whole new checkpoint beside the
old one (``DIR.partial``) and then swaps the two by renames; a save killed at any point leaves
the old or the new checkpoint complete, and the next load puts a complete one back in place.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ssd_jax import configs, files
from ssd_jax.configs import SSDConfig
from ssd_jax.models.ssd import check_params, param_shapes

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


PARTIAL_SUFFIX = ".partial"  # a new checkpoint being written beside the old one
PREVIOUS_SUFFIX = ".previous"  # the old checkpoint while the new one takes its name


class CheckpointError(RuntimeError):
    """No usable checkpoint: the message names the directory and what to do."""


def _process_local_checkpointer() -> ocp.StandardCheckpointer:
    """A checkpointer for this process alone: parameter checkpoints are written and read by one
    process, never as a collective of all (which would wait for the others)."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"process{me}"))


def _is_complete(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, CONFIG_FILE)) and os.path.isdir(os.path.join(directory, PARAMS_DIR))


def _holds_only_checkpoint_files(directory: str) -> bool:
    """Whether ``directory`` holds nothing but what a parameter save writes (it may be empty or
    partial, with orbax's and our temporary names): the only kind of folder a save may clear."""
    return os.path.isdir(directory) and all(name.lstrip(".").startswith((CONFIG_FILE, PARAMS_DIR))
                                            for name in os.listdir(directory))


def _remove_leftover(path: str) -> None:
    if _holds_only_checkpoint_files(path):
        shutil.rmtree(path, ignore_errors=True)


def _recover(directory: str) -> None:
    """Finishes a parameter save that was killed between its renames: the new checkpoint if it is
    complete, else the old one, takes ``directory``'s name again; leftovers are removed."""
    partial, previous = directory + PARTIAL_SUFFIX, directory + PREVIOUS_SUFFIX
    if not os.path.exists(directory):
        for candidate in (partial, previous):
            if _is_complete(candidate):
                os.replace(candidate, directory)
                logging.warning("%s: recovered the checkpoint of an interrupted save from %s", directory, candidate)
                break
    if _is_complete(directory):
        for leftover in (partial, previous):
            _remove_leftover(leftover)


def save_params(directory: str | os.PathLike, params, config: SSDConfig | None = None, *,
                metadata: dict | None = None, overwrite: bool = False) -> str:
    """Writes ``params`` (and ``config`` or free-form ``metadata``) to ``directory``; returns it.

    With ``overwrite`` an existing checkpoint is replaced, only once the new one is complete.
    What else the old checkpoint's directory holds (``evaluate.py``'s ``eval/``) moves into the
    new one. A directory that is not a checkpoint (files of the user's, another program's
    output) is never written over: ``FileExistsError``, with or without ``overwrite``. An empty
    one is used.
    """
    directory = os.path.abspath(os.fspath(directory))
    _recover(directory)
    if os.path.lexists(directory) and not (_is_complete(directory) or _holds_only_checkpoint_files(directory)):
        raise files.OutputExistsError(
            f"{directory} already exists and is not an ssd_jax checkpoint (it holds other files); a checkpoint is "
            f"never written over them: choose another directory")
    if os.path.exists(os.path.join(directory, PARAMS_DIR)) and not overwrite:
        raise files.OutputExistsError(f"{directory} already holds a checkpoint; pass overwrite=True (--overwrite) "
                                      f"to replace it")
    partial, previous = directory + PARTIAL_SUFFIX, directory + PREVIOUS_SUFFIX
    for path in (partial, previous):  # the names a save passes through
        if os.path.lexists(path) and not _holds_only_checkpoint_files(path):
            raise files.OutputExistsError(f"{path} is in the way of the save (a save passes through that name) and "
                                          f"is not a part of an ssd_jax checkpoint; move it away")
    _remove_leftover(partial)
    os.makedirs(partial)
    payload = {"config": configs.to_dict(config) if config is not None else None, **(metadata or {})}
    params = jax.tree.map(np.asarray, params)
    with _process_local_checkpointer() as checkpointer:
        checkpointer.save(os.path.join(partial, PARAMS_DIR), params)
        checkpointer.wait_until_finished()
    files.write_json_atomically(os.path.join(partial, CONFIG_FILE), payload)  # last: marks the new one complete
    if os.path.exists(directory):
        _remove_leftover(previous)
        for name in set(os.listdir(directory)) - {CONFIG_FILE, PARAMS_DIR}:  # kept, in the new checkpoint
            os.replace(os.path.join(directory, name), os.path.join(partial, name))
        os.replace(directory, previous)
        os.replace(partial, directory)
        _remove_leftover(previous)
    else:
        os.replace(partial, directory)
    return directory


def load_metadata(directory: str | os.PathLike) -> dict:
    """The ``config.json`` payload of a parameter checkpoint."""
    directory = os.path.abspath(os.fspath(directory))
    _recover(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    if not _is_complete(directory):
        inside = os.path.join(directory, "params")
        hint = (f"; did you mean {inside}? (a training workdir keeps its final parameters there)"
                if _is_complete(inside) else "; write one with experiments/convert_weights.py or training")
        raise FileNotFoundError(
            f"{directory} is not a complete ssd_jax parameter checkpoint (needs {CONFIG_FILE} and {PARAMS_DIR}/){hint}")
    try:
        with open(config_path) as f:
            return json.load(f)
    except ValueError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}): the checkpoint's config is damaged; "
                         f"convert or train the checkpoint again") from error


def load_params(directory: str | os.PathLike, config: SSDConfig | None = None) -> tuple[dict, SSDConfig]:
    """Restores ``(params, config)``; ``config`` defaults to the one stored with the checkpoint.

    The restored tree is checked against the config's parameter shapes.
    """
    directory = os.path.abspath(os.fspath(directory))
    stored = load_metadata(directory).get("config")
    if config is None:
        if stored is None:
            raise ValueError(f"{directory} stores no model config; pass config=...")
        try:
            config = configs.from_dict(stored)
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"{os.path.join(directory, CONFIG_FILE)} holds no valid model config ({error})") from error
    target = param_shapes(config)
    with _process_local_checkpointer() as checkpointer:
        try:
            params = checkpointer.restore(os.path.join(directory, PARAMS_DIR), target)
        except (ValueError, KeyError) as error:
            raise ValueError(f"the checkpoint in {directory} does not fit config {config.name!r}: {error}") from error
        except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many kinds for damaged files
            raise ValueError(f"the parameters in {os.path.join(directory, PARAMS_DIR)} do not load; the files are "
                             f"damaged ({type(error).__name__}: {error})") from error
    check_params(params, config)  # orbax restores the stored shapes whatever the target says
    return params, config


def load_tree(directory: str | os.PathLike) -> dict:
    """Restores a parameter (sub)tree as saved, e.g. a converted VGG16 backbone."""
    directory = os.path.abspath(os.fspath(directory))
    load_metadata(directory)
    with _process_local_checkpointer() as checkpointer:
        return checkpointer.restore(os.path.join(directory, PARAMS_DIR))


class TrainCheckpoints:
    """Training checkpoints: the train state plus JSON metadata (data position, config), kept
    for the last ``keep`` saves, written asynchronously by orbax's ``CheckpointManager``.

    orbax writes each step under a temporary name and renames it when complete, so an
    interrupted save is never listed. A checkpoint that fails to restore (damaged files) is set
    aside as ``<step>.unreadable-<time>`` with a warning naming it, and the one before is tried.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, asynchronous: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep, self.asynchronous = keep, asynchronous
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                               enable_async_checkpointing=self.asynchronous)
        return ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state, metadata: dict, *, wait: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(metadata)), force=True)
        if wait:
            self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state) -> tuple[object, dict] | None:
        """(state, metadata) of the newest checkpoint that restores; None if there is none at all.

        ``abstract_state``: the state's structure with ``jax.ShapeDtypeStruct`` leaves (with
        shardings, to restore straight onto the devices). Raises ``CheckpointError`` when there
        are checkpoints but none restores.
        """
        set_aside = []
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint: set aside, try an older one
                set_aside.append(self._set_aside(step, error))
                continue
            if set_aside:
                self.manager.close()
                self.manager = self._open()  # forget the steps set aside: the next save may take their number
            return restored.state, restored.meta
        if set_aside:
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores (set aside: {', '.join(set_aside)}). Train in another "
                f"--workdir, or delete {self.directory} to start this run again from step 0")
        return None

    def _set_aside(self, step: int, error: Exception) -> str:
        path = os.path.join(self.directory, str(step))
        target = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0 and os.path.exists(path):
            os.replace(path, target)
        message = (f"checkpoint {step} in {self.directory} does not restore ({type(error).__name__}: "
                   f"{str(error)[:300]}); set aside as {os.path.basename(target)}, trying an older one")
        print(f"warning: {message}")  # the user decides about the files set aside: said where they see it
        return os.path.basename(target)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
