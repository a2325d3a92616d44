r"""Starts N processes of a training script on this machine, as N hosts would run it: to try out
or test multi-process training without a cluster.

  python experiments/launch_local.py --num_processes=2 -- experiments/train.py --dataset=shapes_tiny \
      --workdir=runs/two_processes

Each process gets --coordinator_address=localhost:PORT (a free port), --num_processes=N and
--process_id=I, and one CPU device (XLA_FLAGS), unless --devices_per_process says otherwise.
Their output is prefixed with [I]. When one process fails, the others are stopped, and the
launcher exits with the first failure's code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Processes to start.", lower_bound=1)
DEVICES = flags.DEFINE_integer("devices_per_process", 1, "CPU devices of each process.", lower_bound=1)
PORT = flags.DEFINE_integer("port", 0, "Coordinator port (0: a free one).")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def forward(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"{prefix} {line}")
        out.flush()


def main(argv):
    command = argv[1:]
    if not command:
        sys.exit("error: name the script and its flags after --, e.g. -- experiments/train.py --dataset=shapes_tiny")
    port = PORT.value or free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES.value}"}
    processes, threads = [], []
    for index in range(NUM_PROCESSES.value):
        flags_ = [f"--coordinator_address=localhost:{port}", f"--num_processes={NUM_PROCESSES.value}",
                  f"--process_id={index}"]
        process = subprocess.Popen([sys.executable, *command, *flags_], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        processes.append(process)
        thread = threading.Thread(target=forward, args=(process.stdout, f"[{index}]", sys.stdout), daemon=True)
        thread.start()
        threads.append(thread)
    failure = None
    try:
        while any(p.poll() is None for p in processes) and failure is None:
            failed = [p for p in processes if p.poll() not in (None, 0)]
            failure = failed[0].returncode if failed else None
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C: pass it on, so that every process saves and stops
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        failure = 130
    if failure is not None:
        for p in processes:
            if p.poll() is None:
                p.terminate()
        print(f"launch_local: a process failed (exit code {failure}); stopped the others", file=sys.stderr)
    for p in processes:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
    for thread in threads:
        thread.join(timeout=5)
    if failure is None:
        failure = next((p.returncode for p in processes if p.returncode), 0)
    sys.exit(128 - failure if failure < 0 else failure)  # killed by signal N: 128 + N, as a shell says


if __name__ == "__main__":
    app.run(main)
