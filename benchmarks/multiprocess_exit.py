r"""Does a finished multi-process run exit 0 on every process, every time, on a loaded machine?

  python benchmarks/multiprocess_exit.py               # 10 two-process runs beside a CPU hog
  python benchmarks/multiprocess_exit.py --runs=3 --hogs=0

Each run trains the 16-image shapes set for a few steps as 2 processes of 1 CPU device
(jax.distributed on localhost, --peer_timeout=20 as in the tests), and ends as a real run ends:
process 0 evaluates, saves, plots and draws while process 1 has nothing left to do, which is
where a JAX shutdown deadline used to abort a finished job. Beside it, --hogs processes spin
on the CPU. Every process of every run must exit 0 and the run's parameters must be saved;
the script prints a table, writes JSON to benchmarks/results/, and exits 1 otherwise (CI
runs it).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags

RUNS = flags.DEFINE_integer("runs", 10, "Two-process training runs.", lower_bound=1)
HOGS = flags.DEFINE_integer("hogs", 1, "Processes spinning on the CPU beside the runs.", lower_bound=0)
STEPS = flags.DEFINE_integer("steps", 4, "Training steps of each run.", lower_bound=2)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
TRAIN = os.path.join(ROOT, "experiments", "train.py")


def spin() -> None:
    while True:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def one_run(workdir: str, data_dir: str, env: dict) -> dict:
    """Two processes of one training run -> their exit codes, seconds, and whether params/ exists."""
    port = free_port()
    fields = {"optimizer": "sgd", "learning_rate": 0.01, "warmup_steps": 0, "num_steps": STEPS.value,
              "batch_size": 4, "checkpoint_every": 2, "eval_every": STEPS.value, "eval_batch_size": 4,
              "log_every": 1, "data_dir": data_dir}
    command = [sys.executable, TRAIN, "--dataset=shapes_tiny", f"--workdir={workdir}",
               *(f"--config.{key}={value}" for key, value in fields.items()),
               f"--coordinator_address=localhost:{port}", "--num_processes=2", "--peer_timeout=20"]
    start = time.perf_counter()
    processes = [subprocess.Popen([*command, f"--process_id={index}"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for index in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    return {"exit_codes": [p.returncode for p in processes], "seconds": round(time.perf_counter() - start, 1),
            "params_saved": os.path.isdir(os.path.join(workdir, "params")),
            "tails": [output[-1500:] for output in outputs]}


def main(argv):
    del argv
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    root = tempfile.mkdtemp(prefix="multiprocess_exit_")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, "xla_cache"))  # runs 2.. skip the compiles
    data_dir = os.path.join(root, "tfds")
    sys.path.insert(0, ROOT)
    from ssd_jax.data import sources

    sources.open_source("shapes_tiny", data_dir=data_dir).prepare()  # once, before the processes read it
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(HOGS.value)]
    for hog in hogs:
        hog.start()
    results = []
    try:
        for run in range(RUNS.value):
            result = one_run(os.path.join(root, f"run{run}"), data_dir, env)
            results.append(result)
            ok = result["exit_codes"] == [0, 0] and result["params_saved"]
            print(f"run {run + 1}/{RUNS.value}: exit codes {result['exit_codes']}, params saved "
                  f"{result['params_saved']}, {result['seconds']} s{'' if ok else '  <- FAILED'}", flush=True)
            if not ok:
                for index, tail in enumerate(result["tails"]):
                    print(f"--- process {index}, last lines:\n{tail}")
    finally:
        for hog in hogs:
            hog.terminate()
    failures = sum(r["exit_codes"] != [0, 0] or not r["params_saved"] for r in results)
    print(f"\n| runs | CPU hogs | steps | every process exited 0 | median seconds per run |\n|---|---|---|---|---|\n"
          f"| {len(results)} | {HOGS.value} | {STEPS.value} | {len(results) - failures} of {len(results)} | "
          f"{sorted(r['seconds'] for r in results)[len(results) // 2]} |")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "multiprocess_exit.json"), "w") as f:
        json.dump({"runs": [{k: v for k, v in r.items() if k != "tails"} for r in results], "hogs": HOGS.value,
                   "failures": failures}, f, indent=2)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    app.run(main)
