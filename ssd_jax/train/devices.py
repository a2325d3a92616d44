"""Devices and processes: the ('data',) mesh, replicated state, global batches, host copies and
the processes' meeting points."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


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


def sync_processes(name: str) -> None:
    """Waits until every process gets here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def host_copy(tree):
    """This process's numpy copy of a replicated pytree (works for arrays spread over processes)."""
    return jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)) if isinstance(leaf, jax.Array)
                        else np.asarray(leaf), tree)
