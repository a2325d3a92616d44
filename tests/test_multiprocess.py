"""Training and evaluation on several processes (jax.distributed on localhost, gloo collectives,
one CPU device each): the same results as one process on as many devices, resumption after a
process is killed, SIGTERM on one process stopping all at one step, a dead peer ending the job
instead of hanging."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from conftest import built_once

from ssd_jax import checkpoint
from ssd_jax.data import sources

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, os.pardir, "experiments", "train.py")
LAUNCH = os.path.join(HERE, os.pardir, "experiments", "launch_local.py")


def free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def env(devices):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def start_processes(command, count=2, timeout=20):
    """``count`` processes of ``command`` joined into one job; returns the Popen objects."""
    port = free_port()
    return [subprocess.Popen([*command, f"--coordinator_address=localhost:{port}", f"--num_processes={count}",
                              f"--process_id={index}", f"--peer_timeout={timeout}"], env=env(1),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for index in range(count)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    sources.open_source("shapes_tiny", data_dir=directory).prepare()  # generated once, before the processes
    return directory


def train_args(data_dir, workdir, **overrides):
    fields = {"optimizer": "sgd", "learning_rate": 0.01, "warmup_steps": 0, "num_steps": 12, "batch_size": 4,
              "checkpoint_every": 2, "eval_every": 12, "eval_batch_size": 4, "log_every": 1, "data_dir": data_dir}
    fields.update(overrides)
    return [sys.executable, TRAIN, "--dataset=shapes_tiny", f"--workdir={workdir}",
            *(f"--config.{key}={value}" for key, value in fields.items())]


def params_of(workdir):
    return jax.tree.leaves(checkpoint.load_params(os.path.join(workdir, "params"))[0])


def wait_for_history(history, lines, processes):
    """Waits until the run has logged ``lines`` steps (or a process has ended)."""
    deadline = time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if history.exists() and len(history.read_text().splitlines()) >= lines:
            return len(history.read_text().splitlines())
        time.sleep(0.05)
    raise AssertionError(f"the run ended or stalled before logging {lines} steps")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """A training of 2 processes x 1 device: process 1 killed (SIGKILL) midway; the same command
    again, process 1 sent SIGTERM after a step; the same command a third time, through
    launch_local.py, to the end; and the same training as 1 process x 2 devices. Run once per
    test run (several workers of pytest -n share it)."""

    def run_all(root):
        command = train_args(data_dir, root / "two")  # process 0 evaluates and draws at the end
        history = root / "two" / "metrics.jsonl"
        processes = start_processes(command)
        logged = wait_for_history(history, 4, processes)
        processes[1].kill()
        killed_at = time.time()
        output, _ = processes[0].communicate(timeout=300)
        killed = {"returncode": processes[0].returncode, "waited": time.time() - killed_at, "output": output,
                  "params_written": (root / "two" / "params").exists()}
        processes[1].communicate()
        # The same command resumes; SIGTERM to one process once it has trained a step past the kill.
        processes = start_processes(command)
        wait_for_history(history, logged + 1, processes)
        processes[1].send_signal(signal.SIGTERM)
        terminated = [(p.communicate(timeout=300)[0], p.returncode) for p in processes]
        # The same command on every process resumes from the last checkpoint, to the end.
        two = subprocess.run([sys.executable, LAUNCH, "--num_processes=2", "--", *command[1:], "--peer_timeout=20"],
                             env=env(1), capture_output=True, text=True, timeout=900)
        assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
        # The same training without evaluation: evaluation over processes is tested on its own below.
        one = subprocess.run(train_args(data_dir, root / "one", eval_every=0), env=env(2), capture_output=True,
                             text=True, timeout=900)
        assert one.returncode == 0, one.stderr[-3000:]
        (root / "results.json").write_text(json.dumps({
            "killed": killed, "terminated": terminated,
            "two": {"stdout": two.stdout, "stderr": two.stderr, "returncode": two.returncode}}))

    root = built_once(tmp_path_factory, "multiprocess_runs", run_all)
    results = json.loads((root / "results.json").read_text())
    return root, results["killed"], [tuple(pair) for pair in results["terminated"]], SimpleNamespace(**results["two"])


def test_a_killed_process_ends_the_job_and_the_same_command_resumes(runs):
    _, killed, _, two = runs
    assert killed["returncode"] != 0, killed["output"][-3000:]
    assert killed["waited"] < 120, killed["waited"]  # bounded by --peer_timeout (20 s here), never a hang
    assert "another process has probably died" in killed["output"] or "another task died" in killed["output"], \
        killed["output"][-3000:]
    assert not killed["params_written"]
    assert "[0] resuming from step" in two.stdout  # and it ends as the uninterrupted run (below)


def test_sigterm_on_one_process_stops_all_at_the_same_step_after_saving(runs):
    _, _, terminated, two = runs
    for output, returncode in terminated:  # interrupted, not finished, not crashed: 143 on both
        assert returncode == 128 + signal.SIGTERM, output[-3000:]
    # Process 0 reports for all (process 1 got the signal); the checkpoint it names is a collective
    # save, which both processes made at that step, and the same command resumes from it.
    output = terminated[0][0]
    line = next((line for line in output.splitlines() if "interrupted by SIGTERM at step" in line), None)
    assert line is not None, output[-3000:]
    step = int(line.split("interrupted by SIGTERM at step ")[1].split()[0].rstrip(",;"))
    assert step < 12 and f"[0] resuming from step {step} " in two.stdout, two.stdout[-3000:]


def test_two_processes_train_as_one_process_on_two_devices(runs):
    root, _, _, two = runs
    for a, b in zip(params_of(root / "two"), params_of(root / "one")):
        scale = max(float(np.abs(b).max()), 1e-6)
        assert float(np.abs(a - b).max()) <= 1e-4 * scale
    # Only process 0 reports: one progress bar, one summary.
    lines = two.stdout.splitlines()
    assert any(line.startswith("[0] done:") for line in lines)
    assert not any(line.startswith("[1]") and ("done:" in line or "training:" in line) for line in lines)

    def losses(workdir):
        records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        return [(r["step"], r["loss"]) for r in records if "loss" in r]

    # The history of the killed run was cut back to its checkpoint: each step once, as in one run.
    (two_losses, one_losses) = losses(root / "two"), losses(root / "one")
    assert [step for step, _ in two_losses] == [step for step, _ in one_losses] == list(range(1, 13))
    np.testing.assert_allclose([v for _, v in two_losses], [v for _, v in one_losses], rtol=1e-4)
    assert any("voc07_mAP" in json.loads(line) for line in open(root / "two" / "metrics.jsonl"))


EVALUATE = textwrap.dedent("""
    import json, sys
    import jax
    if len(sys.argv) > 2:
        jax.distributed.initialize(sys.argv[2].split("=")[1], int(sys.argv[3].split("=")[1]),
                                   int(sys.argv[4].split("=")[1]))
    import ssd_jax
    from ssd_jax import configs
    from ssd_jax.data import sources
    from ssd_jax.evaluation import datasets
    config = configs.ssd_tiny(num_classes=6)
    params = jax.tree.map(lambda x: jax.device_get(x), ssd_jax.init(jax.random.key(0), config))
    for i in range(config.num_sources):  # spread scores: many detections, metrics above 0
        params[f"conf_{i}"]["kernel"] = params[f"conf_{i}"]["kernel"] * 30
    source = sources.open_source("shapes_tiny", data_dir=sys.argv[1])
    metrics, _, detections, _ = datasets.evaluate_split(params, config, source, batch_size=3)
    if jax.process_index() == 0:
        print("METRICS", json.dumps({"metrics": metrics, "images": [d.image_id for d in detections],
                                     "detections": sum(len(d.scores) for d in detections)}))
""")


def test_evaluation_sharded_over_processes_gives_the_same_metrics(data_dir):
    single = subprocess.run([sys.executable, "-c", EVALUATE, data_dir], env=env(1), capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    processes = start_processes([sys.executable, "-c", EVALUATE, data_dir])
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]

    def parse(text):
        return json.loads(next(line for line in text.splitlines() if line.startswith("METRICS"))[8:])

    sharded, whole = parse(outputs[0]), parse(single.stdout)
    assert sharded["images"] == whole["images"] and whole["detections"] > 0
    assert sharded["detections"] == whole["detections"]
    assert whole["metrics"]["voc_mAP"] > 0
    for key, value in whole["metrics"].items():
        assert sharded["metrics"][key] == pytest.approx(value, abs=1e-9), key


def test_wrong_process_flags_are_reported(tmp_path):
    out = subprocess.run([sys.executable, TRAIN, "--dataset=shapes_tiny", f"--workdir={tmp_path}",
                          "--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2"],
                         env=env(1), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--process_id in 0..N-1" in out.stderr
    port = free_port()  # nobody listens there
    start = time.time()
    out = subprocess.run([sys.executable, TRAIN, "--dataset=shapes_tiny", f"--workdir={tmp_path}",
                          f"--coordinator_address=localhost:{port}", "--num_processes=2", "--process_id=1",
                          "--peer_timeout=10"], env=env(1), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and time.time() - start < 120
    assert "could not join the job" in out.stderr or "coordination" in out.stderr.lower(), out.stderr[-2000:]
