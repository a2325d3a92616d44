"""The training command line, shared by experiments/train.py and its aliases train_voc.py and
train_coco.py: flags (the config file with its --config.FIELD overrides, ml_collections' way;
the --dataset and --data_dir shortcuts, applied to the parsed config), device checks,
multi-host start-up, and the run itself with its one-line errors and exit codes."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ssd_jax.data import sources

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# --dataset=NAME: the data set's recipe, with the data set itself set in it.
DATASET_CONFIGS = {"voc": "voc_ssd300.py", "coco": "coco_ssd300.py", "shapes": "shapes_ssd_tiny.py",
                   "shapes_tiny": "shapes_ssd_tiny.py"}

ACCEL = flags.DEFINE_enum("accel", "cpu", ["gpu", "tpu", "cpu"], "Accelerator to train on; checked before training.")
WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, metrics and pictures go here; an "
                              "existing run in it is resumed.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Multi-host with the cluster's own discovery (TPU pods, "
                                "SLURM, ...): jax.distributed.initialize() without arguments.")
PEER_TIMEOUT = flags.DEFINE_integer("peer_timeout", 120, "Multi-host: seconds after which a process that stopped "
                                    "answering (dead, unreachable) ends the job on every process, and the longest "
                                    "wait to join it.", lower_bound=10)
SHOW_CONFIG = flags.DEFINE_bool("show_config", False, "Print the training config (every field, after the "
                                "--config.FIELD overrides) and exit.")
DATASET = flags.DEFINE_enum("dataset", None, list(sources.names()),
                            "Shortcut: train on this data set (--config.dataset) with its recipe "
                            f"({', '.join(f'{k}: {v}' for k, v in DATASET_CONFIGS.items())}; the other data sets "
                            "keep the script's), unless --config names another file; --config.FIELD overrides "
                            "apply on top.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "Shortcut for --config.data_dir (the TFDS data directory, or "
                               "your VOC folder with --dataset=vocdir).")
CONFIG = None  # the --config flag, defined by define_config_flag


def define_config_flag(default_file: str) -> None:
    """Defines --config, whose default is ``default_file`` of experiments/configs."""
    global CONFIG
    with _nested_fields_reported():
        # Unknown --config.FIELD overrides are accepted here so that the config checks list them with
        # every other problem ("did you mean ...") instead of ml_collections failing on the first.
        CONFIG = config_flags.DEFINE_config_file(
            "config", os.path.join(CONFIG_DIR, default_file), "Training config file (experiments/configs/*.py, "
            "get_config()); override fields with --config.FIELD=VALUE; --show_config lists the fields.",
            lock_config=False, accept_new_attributes=True)


@contextlib.contextmanager
def _nested_fields_reported():
    """--config.a.b=... where 'a' is no field holding fields: ml_collections raises KeyError while it
    reads the overrides (when --config is defined or parsed); reported like the other problems."""
    try:
        yield
    except (KeyError, AttributeError) as error:
        name = str(error).strip("\"'").split("'")[0]
        print(f"error: invalid training config:\n  {name}: not a training config field with fields of its own "
              f"(the config's fields are flat: --config.FIELD=VALUE)\n(--show_config prints every field)",
              file=sys.stderr)
        sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with the config problems it cannot express reported as config problems."""
    with _nested_fields_reported():
        return flags.FLAGS(argv)


def load_recipe(filename: str):
    """The config of a recipe file of experiments/configs (its ``get_config()``)."""
    path = os.path.join(CONFIG_DIR, filename)
    spec = importlib.util.spec_from_file_location(f"recipe_{os.path.splitext(filename)[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def command_line_config():
    """The training config of the command line: --config's file, or --dataset's recipe when no
    --config is given; then --dataset and --data_dir set in it; then the user's --config.FIELD
    overrides, which win."""
    config = CONFIG.value
    if DATASET.value is None and DATA_DIR.value is None:
        return config
    if DATASET.value in DATASET_CONFIGS and not flags.FLAGS["config"].present:
        config = load_recipe(DATASET_CONFIGS[DATASET.value])
    if DATASET.value is not None:
        config.dataset = DATASET.value
    if DATA_DIR.value is not None:
        config.data_dir = DATA_DIR.value
    for field, value in config_flags.get_override_values(flags.FLAGS["config"]).items():
        config[field] = value
    return config


def main() -> None:
    """The training script: ``python experiments/SCRIPT.py [--dataset=NAME] [--config=FILE]
    [--config.FIELD=VALUE ...] [--workdir=DIR] [--accel=...]``, after ``define_config_flag``."""

    def train_main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        logging.set_verbosity(logging.WARNING)
        config = command_line_config()
        run(config, WORKDIR.value or f"runs/{config.dataset}_{config.model}", after_training=draw_test_detections)

    app.run(train_main, flags_parser=_parse_flags)


def draw_test_detections(config, workdir: str, count: int = 12) -> None:
    """The trained model's detections on the first test images -> WORKDIR/detections.png (when the
    run evaluates: its test split is then known to be there)."""
    if not config.eval_every:
        return
    from ssd_jax import checkpoint, train
    from ssd_jax.evaluation import datasets as evaluation

    params, model_config = checkpoint.load_params(os.path.join(workdir, "params"))
    evaluation.draw_split_detections(params, model_config, train.open_data(config),
                                     os.path.join(workdir, "detections.png"), count=count)


def run(config, workdir: str, *, after_training=None) -> None:
    """Trains ``config`` in ``workdir`` as a command-line user expects: errors in one line with
    exit code 1 (2 for a bad config), an interruption exits 128 + signal after saying how to
    resume, and the summary lists only files that exist. ``after_training(config, workdir)``
    may draw more pictures."""
    if SHOW_CONFIG.value:
        print(config)
        sys.exit(0)
    jax = start_jax(ACCEL.value)
    from ssd_jax import train
    from ssd_jax.data import DatasetNotPreparedError

    is_main = jax.process_index() == 0

    try:
        last = train.train_and_evaluate(config, workdir)
    except train.ConfigError as error:
        print(f"error: {error}\n(--show_config prints every field)", file=sys.stderr)
        sys.exit(2)
    except train.TrainingInterrupted as interruption:
        if is_main:
            print(interruption, file=sys.stderr)
        if jax.process_count() > 1:  # every process stopped at the same step and saved: leave together
            leave_job(jax)
        sys.exit(interruption.exit_code)
    except (DatasetNotPreparedError, *train.USER_ERRORS) as error:
        sys.exit(f"error: {error}" + ("" if is_main else f" (process {jax.process_index()})"))
    except jax.errors.JaxRuntimeError as error:
        if jax.process_count() == 1:
            raise
        # A collective with the other processes failed: one of them died or cannot be reached.
        # Leave at once: JAX's own shutdown would wait for the dead one and then abort.
        print(f"error: process {jax.process_index()}: a collective with the other processes failed "
              f"({str(error).splitlines()[0][:200]}); another process has probably died: see its output. Run the "
              f"same command on every process again to resume from the last checkpoint.", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
    if is_main:  # process 0 alone draws and reports
        if after_training is not None:
            after_training(config, workdir)
        shown = {k: float(f"{v:.4g}") for k, v in last.items() if "/" not in k or k.startswith("loss")}
        written = [name for name in ("training_curve.png", "class_ap.png", "detections.png", "metrics.jsonl",
                                     "tensorboard", "params") if os.path.exists(os.path.join(workdir, name))]
        print(f"done: {shown}\nworkdir {workdir}: {', '.join(written)}")
    if jax.process_count() > 1:
        leave_job(jax)


def start_jax(accel: str):
    """Selects the platform, joins a multi-host job if asked, and checks the devices are there."""
    if accel == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if COORDINATOR.value or DISTRIBUTED.value:
        join_processes(jax)
    try:
        devices = jax.devices(accel)
    except RuntimeError as error:
        hint = {"gpu": "install JAX for CUDA: pip install -U 'jax[cuda12]' (or 'jax[cuda13]')",
                "tpu": "run on a TPU VM with: pip install -U 'jax[tpu]'"}.get(accel, "")
        sys.exit(f"error: --accel={accel} but JAX finds no {accel.upper()} ({error}). {hint}")
    logging.info("process %d of %d: %d local %s devices, %d in all", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), accel, len(devices))
    if jax.process_index() == 0:
        print(f"training on {len(devices)} {accel} device(s) ({devices[0].device_kind}), "
              f"{jax.process_count()} process(es)")
    else:  # the other processes are silent but for errors
        logging.set_verbosity(logging.ERROR)
    return jax


# The longest that the processes of a finished run wait for each other at the end (process 0 draws
# and reports after the others are done): far above any drawing, so only a stuck process reaches it.
FINISH_TIMEOUT_SECONDS = 900


def leave_job(jax) -> None:
    """Leaves a multi-process job whose work is all saved, so that every process exits 0.

    JAX's shutdown is a barrier of all processes with a deadline, and a missed deadline aborts
    every process (SIGABRT, exit code 134) however finished its work is. So the processes first
    meet at a barrier of their own with a long deadline (process 0 may still be drawing), then
    shut down together, well within JAX's deadline. Should even that first meeting fail, the
    work is saved anyway: say so and exit 0 without JAX's shutdown, which could only abort.
    """
    from jax._src import distributed  # the coordination service's client: barriers with a deadline

    try:
        distributed.global_state.client.wait_at_barrier("ssd_jax_finished", FINISH_TIMEOUT_SECONDS * 1000)
    except jax.errors.JaxRuntimeError as error:
        print(f"warning: process {jax.process_index()}: training finished and everything is saved, but the "
              f"processes could not meet to leave the job together ({str(error).splitlines()[0][:200]}); "
              f"exiting without JAX's shutdown", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    jax.distributed.shutdown()


def join_processes(jax) -> None:
    """jax.distributed.initialize with bounded waits, or exits saying what is wrong with the flags."""
    if not DISTRIBUTED.value:
        count, index = NUM_PROCESSES.value, PROCESS_ID.value
        if count is None or index is None or count < 1 or not 0 <= index < count:
            sys.exit(f"error: --coordinator_address needs --num_processes=N (N >= 1) and --process_id in 0..N-1, "
                     f"got --num_processes={count} --process_id={index}")
    timeout = PEER_TIMEOUT.value
    try:
        # The shutdown deadline only bounds how far apart the processes may arrive at JAX's shutdown
        # (leave_job brings them there together); a missed one aborts all, so it is not kept short.
        jax.distributed.initialize(coordinator_address=COORDINATOR.value, num_processes=NUM_PROCESSES.value,
                                   process_id=PROCESS_ID.value, initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=timeout, shutdown_timeout_seconds=max(timeout, 300))
    except (RuntimeError, ValueError) as error:  # e.g. the coordinator cannot be reached in time
        sys.exit(f"error: could not join the job at {COORDINATOR.value or 'the cluster'} as process {PROCESS_ID.value} "
                 f"of {NUM_PROCESSES.value} within {timeout} s ({str(error).splitlines()[0][:300]}); check "
                 f"--coordinator_address (process 0's host:port), that every process was started, and --peer_timeout")
