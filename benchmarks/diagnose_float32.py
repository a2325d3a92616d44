"""Where float32 inference slows down at large batches on a GPU (RESULTS.md: SSD300's network
took 9.5 ms at batch 32 and 293 ms at batch 64 in float32 on an H100, bfloat16 was fine).

  python benchmarks/diagnose_float32.py                      # every part below
  XLA_FLAGS=... python benchmarks/diagnose_float32.py --parts=network --batches=64

Parts:
- layers: each distinct convolution of the network, alone, at each batch size: milliseconds per
  image, and the cuDNN algorithm XLA picked for it (from the compiled program's backend config);
- network: the whole network's forward pass at each batch size, at once and in slices of
  ``--slice`` images (``detect(..., network_batch=...)``).
Prints markdown tables and writes JSON.
"""

from __future__ import annotations

import re

import benchlib
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

import ssd_jax
from ssd_jax import configs
from ssd_jax.detect import run_network

MODEL = flags.DEFINE_string("model", "ssd300", "Model preset.")
BATCHES = flags.DEFINE_list("batches", ["32", "64"], "Batch sizes.")
DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype.")
PARTS = flags.DEFINE_list("parts", ["layers", "network"], "Which parts to run.")
SLICE = flags.DEFINE_integer("slice", 32, "Slice size of the sliced network.")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median).")
OUT = flags.DEFINE_string("out", "benchmarks/results/diagnose_float32.json", "JSON to write.")


def network_convolutions(config, dtype):
    """The distinct convolutions of the network: (name, lhs shape without batch, rhs shape, params)."""
    params = ssd_jax.init(jax.random.key(0), config)
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, x: run_network(p, x, config, dtype=dtype))(params, images)
    found = {}

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = (v.aval for v in eqn.invars[:2])
                keys = ("window_strides", "padding", "rhs_dilation", "dimension_numbers", "feature_group_count")
                options = {k: eqn.params[k] for k in keys}
                key = (tuple(lhs.shape[1:]), tuple(rhs.shape), str(options))
                found.setdefault(key, (f"{lhs.shape[1]}x{lhs.shape[2]}x{lhs.shape[3]} -> {rhs.shape[-1]}, "
                                       f"k{rhs.shape[0]} s{options['window_strides'][0]} "
                                       f"d{options['rhs_dilation'][0]}", tuple(lhs.shape[1:]), tuple(rhs.shape),
                                       options))
            for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
                visit(sub)
            for value in eqn.params.values():
                if hasattr(value, "jaxpr"):
                    visit(value.jaxpr)

    visit(jaxpr.jaxpr)
    return list(found.values())


ALGORITHM = re.compile(r'"algo_id":"?(\d+)"?.*?"math_type":"?(\w+)"?', re.S)


def cudnn_choices(compiled_text: str) -> str:
    """The (algorithm id, math type) of each cuDNN convolution in a compiled program's text."""
    choices = []
    for line in compiled_text.splitlines():
        if "__cudnn$conv" in line:
            match = ALGORITHM.search(line)
            engine = re.search(r'"engine_id":"?(\d+)', line)
            workspace = re.search(r"u8\[(\d+)\]", line)
            choices.append(f"{match.group(1) if match else '?'}/{match.group(2) if match else '?'}"
                           f"{'/e' + engine.group(1) if engine else ''}"
                           f"{'/ws' + workspace.group(1) if workspace else ''}")
    return "; ".join(choices) or "(no cuDNN call)"


def time_layers(config, dtype) -> list[dict]:
    rows = []
    for name, lhs_shape, rhs_shape, options in network_convolutions(config, dtype):
        row = {"layer": name}
        for batch in map(int, BATCHES.value):
            key_x, key_w = jax.random.split(jax.random.key(batch))
            x = jax.random.normal(key_x, (batch, *lhs_shape), dtype)
            w = jax.random.normal(key_w, rhs_shape, dtype) * 0.05
            conv = jax.jit(lambda x, w, o=options: jax.lax.conv_general_dilated(x, w, **o))
            compiled, _ = benchlib.compile_timed(conv, x, w)
            seconds = benchlib.seconds_per_call(lambda c=compiled, x=x, w=w: c(x, w), repeats=REPEATS.value)
            row[f"ms_per_image_b{batch}"] = seconds * 1e3 / batch
            row[f"algorithm_b{batch}"] = cudnn_choices(compiled.as_text())
        values = [row[f"ms_per_image_b{b}"] for b in BATCHES.value]
        row["ratio"] = values[-1] / values[0]
        rows.append(row)
        print(row, flush=True)
    return rows


def time_network(config, dtype) -> list[dict]:
    params = ssd_jax.init(jax.random.key(0), config)
    rows = []
    for batch in map(int, BATCHES.value):
        images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, config.image_size, config.image_size,
                                                                        3)).astype(np.float32))
        for network_batch in (None, SLICE.value):
            if network_batch is not None and network_batch >= batch:
                continue
            fn = jax.jit(lambda p, x, n=network_batch: run_network(p, x, config, dtype=dtype, network_batch=n))
            compiled, compile_s = benchlib.compile_timed(fn, params, images)
            seconds = benchlib.seconds_per_call(lambda c=compiled, x=images: c(params, x), repeats=REPEATS.value)
            row = {"batch": batch, "network_batch": network_batch or batch, "ms": seconds * 1e3,
                   "images_per_s": batch / seconds, "compile_s": compile_s}
            rows.append(row)
            print(row, flush=True)
    return rows


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = configs.get(MODEL.value)
    dtype = benchlib.dtype_of(DTYPE.value)
    result = {"benchmark": "diagnose_float32", "model": MODEL.value, "dtype": DTYPE.value}
    print(f"\n{MODEL.value} {DTYPE.value}, {benchlib.machine()}, jax {jax.__version__}\n")
    if "layers" in PARTS.value:
        result["layers"] = time_layers(config, dtype)
        columns = [("layer", "convolution")]
        for b in BATCHES.value:
            columns += [(f"ms_per_image_b{b}", f"ms/image b{b}"), (f"algorithm_b{b}", f"algorithm b{b}")]
        print(benchlib.markdown_table(result["layers"], columns + [("ratio", "ratio")]))
    if "network" in PARTS.value:
        result["network"] = time_network(config, dtype)
        print(benchlib.markdown_table(result["network"], [("batch", "batch"), ("network_batch", "slice"),
                                                          ("ms", "ms"), ("images_per_s", "images/s"),
                                                          ("compile_s", "compile s")]))
    benchlib.write_json(OUT.value, result)


if __name__ == "__main__":
    app.run(main)
