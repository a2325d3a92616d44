"""What a training run keeps in its workdir besides checkpoints, and the rules that protect it.

- ``lock``: the owner's host and pid while a trainer runs; a second trainer is refused, a lock
  left by a process that no longer runs on this host is taken over (and said so).
- ``run.json``: the training config the run started with. A later command in the same workdir
  must be the same run: fields that only say how long or how often (``SAFE_TO_CHANGE``) may
  differ, anything else stops before a file is written.
- ``metrics.jsonl`` and ``tensorboard/``: the metric history; on resume, records past the
  restored step are dropped, so the history never holds a step twice.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import socket

from ssd_jax import files

LOCK_FILE = "lock"
RUN_FILE = "run.json"
HISTORY_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Config fields a resumed run may change: they say how long to train, how often to log, save and
# evaluate, or where the data lives, not what is trained.
SAFE_TO_CHANGE = frozenset({"num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every",
                            "eval_batch_size", "data_dir", "train_annotations", "train_images", "eval_annotations",
                            "eval_images"})


class WorkdirError(RuntimeError):
    """The workdir is in use, unwritable, or holds another run; the message says what to do."""


# ----------------------------------------------------------------------------- writability
def check_writable(workdir: str) -> None:
    """Creates ``workdir`` if needed and proves a file can be written there, or raises WorkdirError."""
    try:
        files.check_writable(workdir)
    except OSError as error:
        raise WorkdirError(f"cannot write to workdir {workdir} ({error.strerror or error}); choose another "
                           f"--workdir or fix its permissions") from error


# ----------------------------------------------------------------------------- lock
def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def locked(workdir: str):
    """Holds ``workdir``'s lock for the duration; raises WorkdirError if another trainer holds it."""
    path = os.path.join(workdir, LOCK_FILE)
    owner = {"host": socket.gethostname(), "pid": os.getpid(),
             "since": datetime.datetime.now().isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_json(path) or {}
            host, pid = holder.get("host"), holder.get("pid")
            if host == owner["host"] and isinstance(pid, int) and not _process_alive(pid):
                print(f"workdir {workdir}: taking over the lock of process {pid}, which no longer runs")
                os.remove(path)
                continue
            raise WorkdirError(
                f"workdir {workdir} is in use by process {pid} on host {host} (since {holder.get('since')}); "
                f"wait for it to finish or stop it, or train in another --workdir. If that process is gone, "
                f"delete {path}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if (_read_json(path) or {}).get("pid") == owner["pid"]:
                os.remove(path)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- the run's config
def config_differences(stored: dict, current: dict) -> tuple[list[str], list[str]]:
    """(unsafe, safe) differences between two flat config dicts, each 'field: stored -> current'."""
    unsafe, safe = [], []
    for key in sorted(set(stored) | set(current)):
        before, after = stored.get(key, "(absent)"), current.get(key, "(absent)")
        if _normalised(before) != _normalised(after):
            (safe if key in SAFE_TO_CHANGE else unsafe).append(f"{key}: {before!r} -> {after!r}")
    return unsafe, safe


def _normalised(value):
    return list(value) if isinstance(value, tuple) else value


def check_same_run(workdir: str, config: dict) -> list[str]:
    """Compares ``config`` with the run recorded in ``workdir`` -> the safe differences (to report).

    Raises WorkdirError naming every unsafe difference. A workdir without ``run.json`` but with
    checkpoints or parameters from an older version is accepted as it is.
    """
    recorded = _read_json(os.path.join(workdir, RUN_FILE))
    if recorded is None:
        return []
    unsafe, safe = config_differences(recorded.get("config", {}), config)
    if unsafe:
        shown = "\n  ".join(unsafe)
        raise WorkdirError(
            f"workdir {workdir} holds another run; resuming it with this config would mix two runs:\n  {shown}\n"
            f"Train in another --workdir, or pass the flags of the stored run ({os.path.join(workdir, RUN_FILE)}) "
            f"to resume it. Only {', '.join(sorted(SAFE_TO_CHANGE))} may change on resume.")
    return safe


def record_run(workdir: str, config: dict) -> None:
    files.write_atomically(os.path.join(workdir, RUN_FILE), json.dumps({"config": config}, indent=2) + "\n")


# ----------------------------------------------------------------------------- history
class MetricLog:
    """Writes each step's scalars to metrics.jsonl and TensorBoard (``log(step, scalars)``)."""

    def __init__(self, workdir: str):
        import tensorflow as tf  # training imports TensorFlow anyway (the input pipeline)

        self.path = os.path.join(workdir, HISTORY_FILE)
        self.tf = tf
        self.writer = tf.summary.create_file_writer(os.path.join(workdir, TENSORBOARD_DIR))

    def __call__(self, step: int, scalars: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        with self.writer.as_default(step=step):
            for name, value in scalars.items():
                self.tf.summary.scalar(name, float(value))
        self.writer.flush()


def truncate_history(workdir: str, step: int) -> int:
    """Drops the metric records (metrics.jsonl and TensorBoard events) of steps after ``step``,
    written by a run that stopped before saving them -> the number of records dropped."""
    dropped = 0
    path = os.path.join(workdir, HISTORY_FILE)
    if os.path.exists(path):
        with open(path) as f:
            lines = f.readlines()
        kept = [line for line in lines if _record_step(line) is not None and _record_step(line) <= step]
        dropped += len(lines) - len(kept)
        if dropped:
            files.write_atomically(path, "".join(kept))
    dropped += _truncate_tensorboard(os.path.join(workdir, TENSORBOARD_DIR), step)
    return dropped


def _record_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut by a kill: dropped


def _truncate_tensorboard(directory: str, step: int) -> int:
    """Rewrites TensorBoard event files without the events of steps after ``step`` (and without a
    last record cut by a kill)."""
    files = sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*")))
    if not files:
        return 0
    import tensorflow as tf  # only a workdir with TensorBoard events, written by training, gets here

    dropped = 0
    for path in files:
        records, cut = [], 0
        try:
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
                records.append(record)
        except tf.errors.DataLossError:
            cut = 1
        kept = [record for record in records if tf.compat.v1.Event.FromString(record).step <= step]
        if len(kept) == len(records) and not cut:
            continue
        dropped += len(records) - len(kept) + cut
        tmp = f"{path}.tmp"
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in kept:
                writer.write(record)
        os.replace(tmp, path)
    return dropped
