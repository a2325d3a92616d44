"""Training: the update step, data parallelism, exact resumption, the NaN guard, the scripts."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ssd_jax
from ssd_jax import checkpoint, configs, train
from ssd_jax.checkpoint import TrainCheckpoints
from ssd_jax.models import param_shapes

REPO = os.path.join(os.path.dirname(__file__), os.pardir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir, **overrides):
    config = train.default_config()
    config.update(model="ssd_tiny", dataset="shapes_tiny", data_dir=data_dir, batch_size=4, max_boxes=8,
                  num_steps=6, optimizer="adam", learning_rate=1e-3, warmup_steps=2, lr_boundaries=(4,),
                  log_every=1, checkpoint_every=3, eval_every=0, shuffle_buffer=16)
    config.update(overrides)
    return config


def random_batch(batch_size=8, max_boxes=4, seed=0):
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 0.6, (batch_size, max_boxes, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, (batch_size, max_boxes, 2))], -1).astype(np.float32)
    mask = rng.random((batch_size, max_boxes)) < 0.7
    mask[0] = False  # an image without objects
    size = configs.ssd_tiny().image_size
    return {"image": rng.integers(0, 255, (batch_size, size, size, 3), dtype=np.uint8),
            "boxes": np.where(mask[..., None], boxes, 0).astype(np.float32),
            "labels": np.where(mask, rng.integers(1, 6, mask.shape), 0).astype(np.int32), "mask": mask}


# ----------------------------------------------------------------------------- pieces
def test_weight_decay_only_on_kernels_and_the_schedule():
    mask = train.weight_decay_mask(param_shapes(configs.ssd300()))
    assert mask["backbone"]["conv1_1"]["kernel"] and not mask["backbone"]["conv1_1"]["bias"]
    assert not mask["backbone"]["conv4_3_norm"]["scale"] and mask["conf_0"]["kernel"]
    config = train.default_config()
    schedule = train.learning_rate_schedule(config)
    np.testing.assert_allclose([schedule(0), schedule(500), schedule(1000), schedule(79_999), schedule(80_000),
                                schedule(100_000)], [1e-5, 0.000505, 1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-4)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch_norm"])
def test_train_step_learns_handles_empty_images_and_compiles_once(batch_norm):
    config = train.default_config()
    config.update(model="ssd_tiny", optimizer="adam", warmup_steps=0, batch_norm=batch_norm)
    model_config = configs.ssd_tiny(num_classes=6)
    optimizer, schedule = train.make_optimizer(config), train.learning_rate_schedule(config)
    mesh = train.data_mesh(jax.devices()[:1])
    step = train.jit_train_step(model_config, optimizer, schedule, mesh)
    state = train.replicate(train.initial_state(config, model_config, optimizer), mesh)
    assert train.uses_batch_norm(state) == batch_norm
    initial_stats = jax.device_get(state.batch_stats)
    batch = random_batch()
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]  # overfits one batch
    assert step._cache_size() == 1
    if batch_norm:  # the running statistics follow the batches; the plain model's are empty
        moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), initial_stats, jax.device_get(state.batch_stats))
        assert min(jax.tree.leaves(moved)) > 0
    else:
        assert state.batch_stats == {}
    # A batch with no object at all: zero loss, finite (zero) gradients, no NaN in the parameters.
    empty = {**batch, "mask": np.zeros_like(batch["mask"]), "labels": np.zeros_like(batch["labels"])}
    state, metrics = step(state, empty)
    assert float(metrics["loss"]) == 0.0 and float(metrics["grad_norm"]) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state.params))
    assert int(state.step) == 9


def test_frozen_blocks_keep_their_weights_and_leave_the_rest_unchanged():
    """The paper freezes conv1_1 .. conv2_2 of its ImageNet VGG16: those stay as they are, and every
    other parameter moves exactly as it does without freezing (stop_gradient cuts nothing else)."""
    model_config = configs.ssd_tiny(num_classes=6)
    mesh = train.data_mesh(jax.devices()[:1])
    batch = random_batch()
    results = {}
    for blocks in (0, 2):
        config = train.default_config()
        config.update(model="ssd_tiny", warmup_steps=0, frozen_blocks=blocks, learning_rate=1e-2)
        optimizer, schedule = train.make_optimizer(config), train.learning_rate_schedule(config)
        step = train.jit_train_step(model_config, optimizer, schedule, mesh,
                                    frozen=train.frozen_prefixes(model_config, train.frozen_blocks(config)),
                                    gradients="xla")
        state = train.replicate(train.initial_state(config, model_config, optimizer), mesh)
        initial = jax.device_get(state.params)
        state, _ = step(state, batch)  # one step: after it the free run's first layers differ
        results[blocks] = (initial, jax.device_get(state.params))
    (start, free), (_, frozen) = results[0], results[2]
    mask = train.frozen_mask(start, train.frozen_prefixes(configs.ssd_tiny(), 2))
    assert sorted(name for name in start["backbone"] if mask["backbone"][name]["kernel"]) == [
        "conv1_1", "conv2_1"]  # ssd_tiny has one convolution per block
    for path, is_frozen in jax.tree_util.tree_leaves_with_path(mask):
        before, moved, kept = (functools.reduce(lambda t, k: t[k.key], path, tree) for tree in (start, free, frozen))
        if is_frozen:
            np.testing.assert_array_equal(kept, before)
            assert not np.array_equal(moved, before)
        else:
            np.testing.assert_allclose(kept, moved, rtol=1e-5, atol=1e-7)
    # -1 is the paper's choice: two blocks with an ImageNet backbone, none from scratch.
    config = train.default_config()
    assert train.frozen_blocks(config) == 0
    config.init_backbone = "somewhere/vgg16"
    assert train.frozen_blocks(config) == 2


EIGHT_DEVICES = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np, ssd_jax
    from ssd_jax import configs, train
    from test_train import random_batch
    config = train.default_config()
    model_config = configs.ssd_tiny(num_classes=6)
    optimizer, schedule = train.make_optimizer(config), train.learning_rate_schedule(config)
    batch = random_batch(8)
    # With BatchNorm, the harder case: its statistics are those of the global batch, not of each device's
    # part (the plain step is the same program less the BatchNorms).
    for batch_norm in (True,):
        config.batch_norm = batch_norm
        initial = jax.device_get(train.initial_state(config, model_config, optimizer))  # host copy: steps donate
        results = []
        for devices in (jax.devices()[:1], jax.devices()):
            mesh = train.data_mesh(devices)
            step = train.jit_train_step(model_config, optimizer, schedule, mesh)
            state, metrics = step(train.replicate(initial, mesh), train.global_batch(batch, jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec("data"))))
            trees = (state.params, state.batch_stats)
            results.append((jax.device_get(trees), float(metrics["loss"]), len(mesh.devices.flat)))
        (one, loss1, n1), (eight, loss8, n8) = results
        diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)))
        scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(one))
        print("RESULT", int(batch_norm), n1, n8, loss1, loss8, diff, scale)
""")


def test_eight_devices_give_the_same_step_as_one():
    out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(__file__), env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    assert len(lines) == 1
    for line in lines:
        batch_norm, n1, n8, loss1, loss8, diff, scale = (float(x) for x in line.split()[1:])
        assert (n1, n8) == (1, 8)
        assert abs(loss1 - loss8) <= 1e-5 * abs(loss1), line
        assert diff <= 1e-5 * scale, line  # float32 sums in another order, nothing more


# ----------------------------------------------------------------------------- the loop
INTERRUPTIBLE = textwrap.dedent("""
    import sys
    from test_train import tiny_config
    from ssd_jax import train
    try:
        train.train_and_evaluate(tiny_config(sys.argv[1], num_steps=20, checkpoint_every=1000, batch_norm=True),
                                 sys.argv[2], progress=False)
    except train.TrainingInterrupted as interruption:
        print(interruption, file=sys.stderr)
        sys.exit(interruption.exit_code)
""")


def test_killed_run_resumes_to_the_same_parameters(tmp_path, data_dir):
    # The interrupted run: SIGTERM once it has logged step 3; it must save and exit cleanly.
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, data_dir, str(killed)],
                               cwd=os.path.dirname(__file__), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)})
    history = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 3:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]  # interrupted is not success
    saved = TrainCheckpoints(killed / "checkpoints").steps()
    assert len(saved) == 1 and 3 <= saved[0] < 20  # saved where the signal stopped it
    assert f"interrupted by SIGTERM at step {saved[0]}" in stderr and "run the same command to resume" in stderr
    assert not (killed / "params").exists()  # the final parameters are written by a finished run only
    config = tiny_config(data_dir, num_steps=20, checkpoint_every=1000, batch_norm=True)  # the quickstart's
    train.train_and_evaluate(config, str(killed), progress=False)

    straight = tmp_path / "straight"
    train.train_and_evaluate(config, str(straight), progress=False)
    resumed, meta = train.restore_train_state(str(killed), config)
    expected, _ = train.restore_train_state(str(straight), config)
    assert meta["step"] == 20 and meta["examples_seen_per_process"] == 80
    assert train.uses_batch_norm(resumed)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(expected)):  # params, optimizer, statistics
        np.testing.assert_array_equal(a, b)
    # The run exported its final parameters, BatchNorms folded, and its curve.
    params, model_config = ssd_jax.checkpoint.load_params(straight / "params")
    assert model_config == configs.ssd_tiny(num_classes=6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(train.inference_params(expected)))):
        np.testing.assert_array_equal(a, b)
    assert (straight / "training_curve.png").stat().st_size > 10_000
    assert (straight / "tensorboard").is_dir()


def test_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    config = tiny_config(data_dir, optimizer="sgd", learning_rate=1e12, warmup_steps=0, num_steps=30,
                         checkpoint_every=1)
    with pytest.raises(train.NonFiniteLossError, match=r"at step (\d+)") as error:
        train.train_and_evaluate(config, str(tmp_path), progress=False)
    failed_at = int(error.value.args[0].split("at step ")[1].split(";")[0])
    saved = TrainCheckpoints(tmp_path / "checkpoints").steps()
    assert saved and max(saved) < failed_at
    state, _ = train.restore_train_state(str(tmp_path), config)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


def _damage(step_dir):
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")


def test_a_corrupt_checkpoint_is_set_aside_and_its_step_saved_again(tmp_path, capsys):
    checkpoints = TrainCheckpoints(tmp_path, asynchronous=False)
    checkpoints.save(1, {"w": np.arange(4.0, dtype=np.float32)}, {"step": 1})
    checkpoints.save(2, {"w": np.arange(4.0, dtype=np.float32) * 2}, {"step": 2})
    _damage(tmp_path / "2")
    abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    restored, meta = checkpoints.restore_latest(abstract)
    assert meta == {"step": 1}
    np.testing.assert_array_equal(restored["w"], np.arange(4.0))
    aside = [name for name in os.listdir(tmp_path) if name.startswith("2.unreadable-")]
    assert len(aside) == 1 and "checkpoint 2" in capsys.readouterr().out  # said, not silent
    checkpoints.save(2, {"w": np.arange(4.0, dtype=np.float32) * 3}, {"step": 2})  # no StepAlreadyExistsError
    assert checkpoints.steps() == [1, 2]
    checkpoints.close()


def test_no_restorable_checkpoint_stops_with_the_directory_named(tmp_path):
    checkpoints = TrainCheckpoints(tmp_path, asynchronous=False)
    checkpoints.save(1, {"w": np.arange(4.0, dtype=np.float32)}, {"step": 1})
    _damage(tmp_path / "1")
    with pytest.raises(ssd_jax.checkpoint.CheckpointError, match="no checkpoint in .* restores"):
        checkpoints.restore_latest({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    checkpoints.close()
    checkpoints.close()


def test_optimizer_choice_is_checked():
    config = train.default_config()
    config.optimizer = "lamb"
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        train.make_optimizer(config)
    assert isinstance(train.make_optimizer(train.default_config()), optax.GradientTransformation)


# ----------------------------------------------------------------------------- the scripts
def run_script(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "experiments", "train_voc.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_train_voc_script_on_shapes_with_evaluation(tmp_path, data_dir):
    # --dataset picks the shapes config; the --config.FIELD overrides apply to it.
    out = run_script("--accel=cpu", "--dataset=shapes_tiny", f"--workdir={tmp_path}",
                     f"--config.data_dir={data_dir}", "--config.num_steps=4",
                     "--config.batch_size=4", "--config.eval_every=4", "--config.eval_batch_size=4",
                     "--config.checkpoint_every=4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "voc07_mAP" in out.stdout
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("voc07_mAP" in r for r in records) and records[-1]["step"] == 4
    assert (tmp_path / "class_ap.png").exists() and (tmp_path / "training_curve.png").exists()
    assert (tmp_path / "detections.png").exists() and "detections.png" in out.stdout.splitlines()[-1]
    assert checkpoint.load_metadata(tmp_path / "params")["class_names"] == ["circle", "square", "triangle", "star",
                                                                             "hexagon"]


def test_missing_accelerator_is_reported():
    out = run_script("--accel=gpu", "--dataset=shapes_tiny", "--workdir=/tmp/unused")
    if out.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert "--accel=gpu but JAX finds no GPU" in out.stderr
