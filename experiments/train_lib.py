"""Shared command line of the training scripts: flags, device checks, multi-host start-up, and
the run itself with its one-line errors and exit codes."""

from __future__ import annotations

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

ACCEL = flags.DEFINE_enum("accel", "cpu", ["gpu", "tpu", "cpu"], "Accelerator to train on; checked before training.")
WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, metrics and pictures go here; an "
                              "existing run in it is resumed.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Multi-host with the cluster's own discovery (TPU pods, "
                                "SLURM, ...): jax.distributed.initialize() without arguments.")
SHOW_CONFIG = flags.DEFINE_bool("show_config", False, "Print the training config (every field, after the "
                                "--config.FIELD overrides) and exit.")


def define_config_flag(default_file: str):
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    return config_flags.DEFINE_config_file("config", os.path.join(here, default_file),
                                           "Training config file (get_config()); override fields with "
                                           "--config.FIELD=VALUE; --show_config lists the fields.")


def run(config, workdir: str, *, after_training=None) -> None:
    """Trains ``config`` in ``workdir`` as a command-line user expects: errors in one line with
    exit code 1 (2 for a bad config), an interruption exits 128 + signal after saying how to
    resume, and the summary lists only files that exist. ``after_training(config, workdir)``
    may draw more pictures; it returns their names."""
    if SHOW_CONFIG.value:
        print(config)
        sys.exit(0)
    start_jax(ACCEL.value)
    from ssd_jax import train
    from ssd_jax.data import DatasetNotPreparedError

    try:
        last = train.train_and_evaluate(config, workdir)
    except train.ConfigError as error:
        print(f"error: {error}\n(--show_config prints every field)", file=sys.stderr)
        sys.exit(2)
    except train.TrainingInterrupted as interruption:
        print(interruption, file=sys.stderr)
        sys.exit(interruption.exit_code)
    except (DatasetNotPreparedError, *train.USER_ERRORS) as error:
        sys.exit(f"error: {error}")
    if after_training is not None:
        after_training(config, workdir)
    shown = {k: float(f"{v:.4g}") for k, v in last.items() if "/" not in k or k.startswith("loss")}
    written = [name for name in ("training_curve.png", "class_ap.png", "detections.png", "metrics.jsonl",
                                 "tensorboard", "params") if os.path.exists(os.path.join(workdir, name))]
    print(f"done: {shown}\nworkdir {workdir}: {', '.join(written)}")


def start_jax(accel: str):
    """Selects the platform, joins a multi-host job if asked, and checks the devices are there."""
    if accel == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if COORDINATOR.value or DISTRIBUTED.value:
        jax.distributed.initialize(coordinator_address=COORDINATOR.value, num_processes=NUM_PROCESSES.value,
                                   process_id=PROCESS_ID.value)
    try:
        devices = jax.devices(accel)
    except RuntimeError as error:
        hint = {"gpu": "install JAX for CUDA: pip install -U 'jax[cuda12]' (or 'jax[cuda13]')",
                "tpu": "run on a TPU VM with: pip install -U 'jax[tpu]'"}.get(accel, "")
        sys.exit(f"error: --accel={accel} but JAX finds no {accel.upper()} ({error}). {hint}")
    logging.info("process %d of %d: %d local %s devices, %d in all", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), accel, len(devices))
    print(f"training on {len(devices)} {accel} device(s) ({devices[0].device_kind}), "
          f"{jax.process_count()} process(es)")
    return jax
