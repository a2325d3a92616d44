"""What the benchmark scripts share: timing of jitted calls, XLA cost analysis, the device's
measured peak, the machine's description, markdown tables and JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def machine() -> str:
    """One line naming the device, e.g. 'cpu cpu, 1 device(s), 2 cores (x86_64)' or 'gpu NVIDIA H100 ...'."""
    device = jax.devices()[0]
    text = f"{device.platform} {device.device_kind}, {jax.device_count()} device(s)"
    if device.platform == "cpu":
        text += f", {len(os.sched_getaffinity(0))} cores ({platform.processor() or platform.machine()})"
    return text


def versions() -> dict:
    import flax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__}


def torch_device() -> str:
    """Where torch runs in a comparison: on the GPU when JAX runs on one, so that both sides use the same chip."""
    import torch

    if jax.default_backend() == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit(f"error: JAX runs on {jax.default_backend()} but torch sees no CUDA device: install a CUDA "
                         f"build of torch, or compare on the CPU with JAX_PLATFORMS=cpu")
    return "cuda"


def torch_device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch_device() == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def compile_timed(jitted, *args, **kwargs):
    """Lowers and compiles ``jitted`` for ``args`` -> (compiled executable, seconds it took)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - start


def flops_of(jitted, *args) -> float | None:
    """FLOPs of one call of ``jitted(*args)`` from XLA's cost analysis (None if unavailable).

    The program is lowered for the CPU and analysed before compilation: a GPU backend hands
    convolutions to cuDNN and leaves their FLOPs out of its analysis. The count does not depend
    on the device.
    """
    try:
        analysis = jitted.trace(*args).lower(lowering_platforms=("cpu",)).cost_analysis()
    except NotImplementedError:
        return None
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
        analysis = analysis[0] if analysis else {}
    value = (analysis or {}).get("flops")
    return float(value) if value and value > 0 else None


def seconds_per_call(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` (its outputs waited for) over ``repeats`` calls, after ``warmup``."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measured_peak(dtype, *, repeats: int = 5) -> dict:
    """FLOP/s this device reaches on a large matmul and on a large 3x3 convolution in ``dtype``.

    The achieved fraction of these (not of a datasheet figure) says how much is left to gain.
    Sizes are smaller on a CPU so that measuring takes seconds, not minutes.
    """
    on_cpu = jax.devices()[0].platform == "cpu"
    n = 2048 if on_cpu else 8192
    batch, side, channels = (4, 38, 256) if on_cpu else (64, 75, 512)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = jax.random.normal(key_b, (n, n), dtype)
    x = jax.random.normal(key_a, (batch, side, side, channels), dtype)
    w = jax.random.normal(key_b, (3, 3, channels, channels), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    matmul_flops = 2.0 * n**3
    conv_flops = 2.0 * batch * side * side * channels * channels * 9
    return {
        "matmul": matmul_flops / seconds_per_call(lambda: matmul(a, b), repeats=repeats),
        "conv": conv_flops / seconds_per_call(lambda: conv(x, w), repeats=repeats),
    }


def dtype_of(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as a markdown table; ``columns``: (key in each row, header)."""
    lines = ["| " + " | ".join(header for _, header in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value)


def write_json(path: str, payload: dict) -> None:
    """Writes ``payload`` with the date, machine and versions added."""
    payload = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), **versions(), **payload}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"\nwrote {path}")


def device_time_by_op(fn: Callable[[], object], *, calls: int = 3, top: int = 25) -> list[dict]:
    """Profiles ``calls`` calls of ``fn()`` and returns the ``top`` XLA operations by device time.

    Each row: op (the HLO instruction, e.g. 'fusion.12' or 'cudnn-conv.3'), ms per call, share of
    the device time, calls, and the start of its HLO text. Reads the profile's "XLA Ops" lines (GPU, TPU);
    on a CPU, where there are none, it lists the host threads' events instead.
    """
    import glob
    import tempfile

    from jax.profiler import ProfileData

    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            for _ in range(calls):
                jax.block_until_ready(fn())
        (path,) = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
        profile = ProfileData.from_file(path)
        totals: dict[str, list] = {}
        device_planes = [p for p in profile.planes if p.name.startswith("/device:")]
        lines = [line for plane in device_planes for line in plane.lines if line.name == "XLA Ops"]
        if not lines:  # no op-level line: the kernels of the device's streams, or the host's events
            lines = [line for plane in device_planes for line in plane.lines
                     if line.name not in ("XLA Modules", "Steps", "XLA TraceMe")]
        if not lines:
            lines = [line for plane in profile.planes if plane.name == "/host:CPU" for line in plane.lines]
        for line in lines:
            for event in line.events:
                entry = totals.setdefault(event.name, [0.0, 0, ""])
                entry[0] += event.duration_ns
                entry[1] += 1
                if not entry[2]:
                    try:
                        stats = dict(event.stats)
                    except (TypeError, ValueError):
                        stats = {}
                    entry[2] = str(stats.get("long_name", stats.get("hlo_op", "")))[:110]
    total = sum(value[0] for value in totals.values()) or 1.0
    rows = [{"op": name, "ms_per_call": value[0] / calls / 1e6, "share": value[0] / total,
             "count": value[1] // calls, "hlo": value[2]}
            for name, value in sorted(totals.items(), key=lambda item: -item[1][0])[:top]]
    return rows
