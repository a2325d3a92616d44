"""Where detect's post-processing spends its time: the variants of ``batched_nms`` side by side.

  python benchmarks/bench_postprocess.py                                     # CPU: SSD300, batch 8
  python benchmarks/bench_postprocess.py --cases=ssd300:64,ssd300_torchvision:32 --profile   # a GPU

Takes the random-weight network's outputs (head locations and logits, bfloat16 network) once,
then times ``detect.postprocess`` (softmax, decode, per-class NMS) on them under each variant:
the depth of the shallow stage (``--depths``) and the narrowing of long top-k's before sorting
(``top_candidates``: on by default off the CPU; 'off' forces one plain top_k). Every variant
must return exactly the default's detections (checked, column 'same'): they differ in speed
alone. ``--profile`` lists the default variant's XLA operations by device time. Random weights
are the worst case: nearly every class passes the 0.01 threshold. Prints markdown, writes JSON.
"""

from __future__ import annotations

import benchlib
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

import ssd_jax
from ssd_jax import configs, nms
from ssd_jax.detect import postprocess, resize_images, run_network

CASES = flags.DEFINE_list("cases", ["ssd300:8"], "model:batch pairs (model presets of ssd_jax.configs).")
DEPTHS = flags.DEFINE_list("depths", ["32", "64"], "Depths of the shallow stage to compare.")
NARROW = flags.DEFINE_list("narrow", ["auto", "off"], "Top-k narrowing: auto (the default) or off.")
REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per variant (median reported).")
PROFILE = flags.DEFINE_bool("profile", False, "List the default variant's XLA operations by device time.")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_postprocess.json", "JSON to write.")

COLUMNS = [("model", "model"), ("batch", "batch"), ("depth", "shallow depth"), ("narrow", "narrow"),
           ("stage", "stage"), ("ms", "post-processing ms"), ("vs_default", "/ default"), ("same", "same")]


def network_outputs(config, batch: int):
    """The random-weight bfloat16 network's (locations [B, P, 4], logits [B, P, C]) for random images."""
    params = ssd_jax.init(jax.random.key(0), config)
    size = config.image_size
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    network = jax.jit(lambda p, x: run_network(p, resize_images(x, size), config, dtype=jnp.bfloat16))
    return jax.block_until_ready(network(params, images))


def measure(model: str, batch: int) -> tuple[list[dict], list[dict]]:
    config = configs.get(model)
    locations, logits = network_outputs(config, batch)
    variants = [(int(depth), narrow) for depth in DEPTHS.value for narrow in NARROW.value]
    default = (nms.SHALLOW_DEPTH, "auto")
    if default not in variants:
        variants.insert(0, default)
    rows, reference, profile = [], None, []
    for depth, narrow in sorted(variants, key=lambda v: v != default):
        saved = nms.NARROW_FROM
        nms.NARROW_FROM = saved if narrow == "auto" else 10**9
        try:
            fn = jax.jit(lambda loc, cls, d=depth: postprocess(loc, cls, config, with_stage=True, shallow_depth=d))
            compiled = fn.lower(locations, logits).compile()
        finally:
            nms.NARROW_FROM = saved
        detections, stage = compiled(locations, logits)
        detections = jax.tree.map(np.asarray, detections)
        if reference is None:
            reference = detections
        seconds = benchlib.seconds_per_call(lambda c=compiled: c(locations, logits), repeats=REPEATS.value)
        rows.append({"model": model, "batch": batch, "depth": depth, "narrow": narrow,
                     "stage": ("shallow", "deep", "exhaustive")[int(stage)], "ms": seconds * 1e3,
                     "same": all(np.array_equal(a, b) for a, b in zip(detections, reference))})
        if PROFILE.value and (depth, narrow) == default:
            profile = benchlib.device_time_by_op(lambda c=compiled: c(locations, logits), top=15)
    base = rows[0]["ms"]
    for row in rows:
        row["vs_default"] = row["ms"] / base
    return rows, profile


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rows, profiles = [], {}
    for case in CASES.value:
        model, _, batch = case.partition(":")
        if not batch.isdigit():
            raise app.UsageError(f"--cases takes model:batch pairs, e.g. ssd300:64; got {case!r}")
        model_rows, profile = measure(model, int(batch))
        rows += model_rows
        if profile:
            profiles[f"{model} b{batch}"] = profile
    print(f"\npost-processing variants, {benchlib.machine()}, jax {jax.__version__}\n")
    print(benchlib.markdown_table(rows, COLUMNS))
    for name, profile in profiles.items():
        print(f"\n{name}, default variant, device time by XLA op:\n")
        print(benchlib.markdown_table(profile, [("op", "op"), ("ms_per_call", "ms"), ("share", "share"),
                                                ("count", "calls"), ("hlo", "HLO")]))
    benchlib.write_json(OUT.value, {"benchmark": "postprocess", "rows": rows, "profiles": profiles})


if __name__ == "__main__":
    app.run(main)
