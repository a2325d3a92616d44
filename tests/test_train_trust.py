"""A workdir is never taken over, configs are checked first, history has no duplicates, nothing
non-finite is saved, a damaged checkpoint is set aside, a parameter save is never half-done."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_train import tiny_config

import ssd_jax
from ssd_jax import checkpoint, configs, train
from ssd_jax import workdir as workdir_lib
from ssd_jax.checkpoint import TrainCheckpoints

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "experiments")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def listing(directory):
    """Every path under ``directory`` with its modification time."""
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory)] = os.stat(path).st_mtime_ns
    return found


def steps_in_history(workdir):
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- config checks
def test_every_config_problem_is_reported_at_once():
    config = train.default_config()
    config.update(batch_size=0, learning_rate=float("nan"), num_steps=-5, checkpoint_every=0, optimizer="lamb",
                  model="ssd301", crop_probability=1.5, lr_boundaries=(100, 50))
    with config.unlocked():
        config.learning_rte = 0.1  # a typo
    with pytest.raises(train.ConfigError) as error:
        train.validate_config(config)
    message = str(error.value)
    for expected in ("batch_size=0", "learning_rate=nan: must be a finite number > 0", "num_steps=-5",
                     "checkpoint_every=0", "optimizer='lamb'", "model='ssd301'", "crop_probability=1.5",
                     "lr_boundaries=(100, 50)", "learning_rte: not a training config field"):
        assert expected in message, (expected, message)
    ok = train.default_config()
    train.validate_config(ok)
    with pytest.raises(train.ConfigError, match="batch_size=32: must be a multiple of the 3 devices"):
        train.validate_config(ok, device_count=3)


def test_training_script_reports_a_bad_config_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, "train_voc.py"), "--dataset=shapes_tiny",
                          f"--workdir={tmp_path / 'w'}", "--config.batch_size=0", "--config.num_steps=-5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "batch_size=0" in out.stderr and "num_steps=-5" in out.stderr and "--show_config" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()  # nothing written


def test_training_scripts_list_their_own_flags():
    for script in ("train_voc.py", "train_coco.py"):
        out = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, script), "--help"], capture_output=True,
                             text=True, timeout=120)
        for flag in ("--accel", "--workdir", "--config", "--coordinator_address", "--show_config"):
            assert flag in out.stdout, (script, flag)
    out = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, "train_voc.py"), "--dataset=shapes",
                          "--show_config", "--config.num_steps=7"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "num_steps: 7" in out.stdout and "model: ssd_tiny" in out.stdout


def test_an_unwritable_workdir_is_reported(tmp_path, data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(workdir_lib.WorkdirError, match="cannot write to workdir"):
        train.train_and_evaluate(tiny_config(data_dir), str(blocker / "run"), progress=False)


# ----------------------------------------------------------------------------- one run per workdir
def test_another_run_never_takes_over_a_workdir(tmp_path, data_dir):
    workdir = tmp_path / "run"
    config = tiny_config(data_dir, num_steps=3, checkpoint_every=3)
    train.train_and_evaluate(config, str(workdir), progress=False)
    before = listing(workdir)
    for change in ({"model": "ssd300"}, {"batch_size": 8}, {"seed": 1}, {"batch_norm": True}):
        with pytest.raises(workdir_lib.WorkdirError) as error:
            train.train_and_evaluate(tiny_config(data_dir, num_steps=3, checkpoint_every=3, **change), str(workdir),
                                     progress=False)
        field = next(iter(change))
        assert f"{field}: " in str(error.value) and "another --workdir" in str(error.value)
        assert listing(workdir) == before  # stopped before writing anything
    # More steps and other intervals are the same run: it goes on.
    train.train_and_evaluate(tiny_config(data_dir, num_steps=5, checkpoint_every=5, log_every=2), str(workdir),
                             progress=False)
    assert TrainCheckpoints(workdir / "checkpoints").steps()[-1] == 5


def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(tmp_path, data_dir):
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = workdir / workdir_lib.LOCK_FILE
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "since": "now"}))
    with pytest.raises(workdir_lib.WorkdirError, match=f"in use by process {os.getpid()}"):
        train.train_and_evaluate(tiny_config(data_dir, num_steps=1), str(workdir), progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "since": "earlier"}))
    train.train_and_evaluate(tiny_config(data_dir, num_steps=1), str(workdir), progress=False)
    assert not lock.exists()  # released at the end


# ----------------------------------------------------------------------------- history, NaN, damaged steps
def test_history_holds_each_step_once_after_a_resume(tmp_path, data_dir):
    workdir = tmp_path / "run"
    config = tiny_config(data_dir, num_steps=5, checkpoint_every=3, log_every=1)
    train.train_and_evaluate(config, str(workdir), progress=False)
    # As if killed after logging step 5 but before saving it: only checkpoint 3 is left.
    shutil.rmtree(workdir / "checkpoints" / "5")
    assert steps_in_history(workdir) == [1, 2, 3, 4, 5]
    train.train_and_evaluate(config, str(workdir), progress=False)
    assert steps_in_history(workdir) == [1, 2, 3, 4, 5]
    import tensorflow as tf

    steps = [tf.compat.v1.Event.FromString(record).step
             for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*"))
             for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
             if tf.compat.v1.Event.FromString(record).summary.value]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5]
    assert len({steps.count(step) for step in set(steps)}) == 1  # every step's scalars once, none twice


def test_a_step_that_makes_the_state_non_finite_is_never_saved(tmp_path, data_dir):
    # A finite loss, then an update so large that the parameters overflow: the loss check (one step
    # behind) cannot see it, the state check before each save does.
    config = tiny_config(data_dir, optimizer="sgd", learning_rate=1e38, warmup_steps=0, num_steps=6,
                         checkpoint_every=1, grad_clip_norm=0.0)
    with pytest.raises(train.NonFiniteLossError, match="parameters or optimizer state became NaN or infinite"):
        train.train_and_evaluate(config, str(tmp_path), progress=False)
    for step in TrainCheckpoints(tmp_path / "checkpoints").steps():
        state, _ = _restore_step(tmp_path, config, step)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves((state.params, state.opt_state)))


def _restore_step(workdir, config, step):
    model_config = configs.get(config.model, num_classes=6)
    abstract = train.abstract_state(config, model_config, train.make_optimizer(config))
    manager = TrainCheckpoints(workdir / "checkpoints")
    try:
        import orbax.checkpoint as ocp

        restored = manager.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta
    finally:
        manager.close()


def test_a_damaged_newest_checkpoint_is_set_aside_and_training_finishes(tmp_path, data_dir, capsys):
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(data_dir, num_steps=4, checkpoint_every=2), str(workdir), progress=False)
    for root, _, files in os.walk(workdir / "checkpoints" / "4" / "state"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(3)
    capsys.readouterr()
    train.train_and_evaluate(tiny_config(data_dir, num_steps=6, checkpoint_every=2), str(workdir), progress=False)
    out = capsys.readouterr().out
    assert "checkpoint 4" in out and "set aside" in out and "resuming from step 2" in out
    assert TrainCheckpoints(workdir / "checkpoints").steps()[-1] == 6
    assert any(name.startswith("4.unreadable-") for name in os.listdir(workdir / "checkpoints"))


# ----------------------------------------------------------------------------- parameter saves
class Killed(Exception):
    """Stands for the process dying at that point."""


def test_a_parameter_save_killed_between_its_renames_loses_nothing(tmp_path, monkeypatch):
    config = configs.ssd_tiny(num_classes=3)
    old = ssd_jax.init(jax.random.key(0), config)
    new = ssd_jax.init(jax.random.key(1), config)
    directory = tmp_path / "ckpt"
    checkpoint.save_params(directory, old, config)
    real_replace = os.replace
    calls = []

    def replace_then_die(source, target):
        calls.append((source, target))
        real_replace(source, target)
        if str(target).endswith(checkpoint.PREVIOUS_SUFFIX):
            raise Killed  # right after the old checkpoint moved aside

    monkeypatch.setattr(checkpoint.os, "replace", replace_then_die)
    with pytest.raises(Killed):
        checkpoint.save_params(directory, new, config, overwrite=True)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert not directory.exists()  # the moment of the kill: neither name holds the checkpoint ...
    params, _ = checkpoint.load_params(directory)  # ... and the next load puts the new one back
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]

    # Killed while writing the new parameters: the old checkpoint is untouched.
    def fail(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(checkpoint.files, "write_json_atomically", fail)
    with pytest.raises(Killed):
        checkpoint.save_params(directory, old, config, overwrite=True)
    monkeypatch.undo()
    params, _ = checkpoint.load_params(directory)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new)):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_config_json_is_reported_with_its_path(tmp_path):
    config = configs.ssd_tiny(num_classes=3)
    directory = checkpoint.save_params(tmp_path / "ckpt", ssd_jax.init(jax.random.key(0), config), config)
    path = os.path.join(directory, checkpoint.CONFIG_FILE)
    with open(path, "w") as f:
        f.write('{"config": {"name": ')
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        checkpoint.load_params(directory)
