"""Images/s of ``ssd_jax.detect`` (pixels -> padded detections), with the network and the
post-processing (decode + per-class NMS) also timed apart, and FLOPs against the device's peak.

  python benchmarks/bench_detect.py                                   # CPU: SSD300 and SSD512, batch 1 and 8
  python benchmarks/bench_detect.py --batches=1,8,64 --dtypes=float32,bfloat16   # a GPU

Weights are random, so nearly every class passes the 0.01 score threshold and NMS gets its
worst case (400 candidates for each of the 20 classes). FLOPs per image come from XLA's cost
analysis of the network's lowered program; the achieved rate is compared with the device's peak as this
script measures it (a large matmul and a large 3x3 convolution in the same dtype). Compile time
(the first call) is reported apart. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import time

import benchlib
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

import ssd_jax
from ssd_jax import configs
from ssd_jax.detect import cast_params, compile_detect, default_network_batch, postprocess, resize_images, run_network

MODELS = flags.DEFINE_list("models", ["ssd300", "ssd512"], "Model presets of ssd_jax.configs.")
BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
DTYPES = flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes (float32, bfloat16).")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per setting (median reported), after one warm-up.")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_detect.json", "JSON to write.")
CAST = flags.DEFINE_bool("cast_params", True, "Below float32, cast the convolutions' parameters to the compute "
                         "dtype once (ssd_jax.detect.cast_params), as repeated calls should; else float32.")
NETWORK_BATCH = flags.DEFINE_list("network_batch", ["auto"], "detect's network_batch values: auto (detect's "
                                  "default), 0 (the whole batch at once) or a slice size.")

COLUMNS = [("model", "model"), ("batch", "batch"), ("dtype", "dtype"), ("params", "conv params"),
           ("network_batch", "network batch"),
           ("images_per_s", "detect images/s"), ("compiled_images_per_s", "compile_detect images/s"),
           ("detect_ms", "detect ms"), ("forward_ms", "network ms"),
           ("postprocess_ms", "decode+NMS ms"), ("postprocess_share", "decode+NMS share"), ("nms_stage", "NMS stage"),
           ("first_call_s", "first call s"), ("gflop_per_image", "GFLOP/image"), ("tflops", "TFLOP/s"),
           ("peak_fraction", "of peak")]


def measure(model: str, batch_size: int, dtype_name: str, peak: dict, network_batch: str) -> dict:
    config = configs.get(model)
    dtype = benchlib.dtype_of(dtype_name)
    network_batch = default_network_batch(batch_size, dtype) if network_batch == "auto" else int(network_batch)
    float_params = ssd_jax.init(jax.random.key(0), config)
    params = cast_params(float_params, dtype) if CAST.value else float_params
    size = config.image_size
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8))

    network_fn = jax.jit(lambda p, x: run_network(p, resize_images(x, size), config, dtype=dtype,
                                                  network_batch=network_batch or None))
    network, _ = benchlib.compile_timed(network_fn, params, images)
    locations, logits = network(params, images)
    post, _ = benchlib.compile_timed(jax.jit(lambda loc, cls: postprocess(loc, cls, config)), locations, logits)
    stage_fn = jax.jit(lambda loc, cls: postprocess(loc, cls, config, with_stage=True)[1])

    def run_detect():
        return ssd_jax.detect(params, images, config=config, dtype=dtype, network_batch=network_batch or batch_size)

    start = time.perf_counter()
    jax.block_until_ready(run_detect())  # the first call compiles the whole program, then runs it
    first_call_s = time.perf_counter() - start

    detect_s = benchlib.seconds_per_call(run_detect, repeats=REPEATS.value)
    # The same program compiled ahead of time, parameters in the layout XLA chose (cast inside).
    detect_batch = compile_detect(float_params, images, config=config, dtype=dtype,
                                  network_batch=network_batch or batch_size)
    compiled_s = benchlib.seconds_per_call(lambda: detect_batch(images), repeats=REPEATS.value)
    forward_s = benchlib.seconds_per_call(lambda: network(params, images), repeats=REPEATS.value)
    post_s = benchlib.seconds_per_call(lambda: post(locations, logits), repeats=REPEATS.value)
    whole = jax.jit(lambda p, x: run_network(p, resize_images(x, size), config, dtype=dtype))  # lax.map: one slice
    flops = benchlib.flops_of(whole, params, images)
    row = {"model": model, "batch": batch_size, "dtype": dtype_name,
           "params": dtype_name if CAST.value else "float32", "network_batch": network_batch or batch_size,
           "images_per_s": batch_size / detect_s, "compiled_images_per_s": batch_size / compiled_s,
           "detect_ms": detect_s * 1e3, "forward_ms": forward_s * 1e3,
           "postprocess_ms": post_s * 1e3, "postprocess_share": post_s / detect_s,
           "nms_stage": ("shallow", "deep", "exhaustive")[int(stage_fn(locations, logits))],
           "first_call_s": first_call_s}
    if flops:
        achieved = flops / forward_s
        row.update(gflop_per_image=flops / batch_size / 1e9, tflops=achieved / 1e12,
                   peak_fraction=achieved / max(peak.values()))
    return row


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    peaks = {name: benchlib.measured_peak(benchlib.dtype_of(name)) for name in DTYPES.value}
    def differs(batch: int, dtype: str, network_batch: str) -> bool:  # from auto, when both are asked for
        if network_batch == "auto":
            return True
        slices = min(int(network_batch) or batch, batch)  # 0 and slices >= the batch: the whole batch
        if "auto" not in NETWORK_BATCH.value:
            return True
        return slices != (default_network_batch(batch, benchlib.dtype_of(dtype)) or batch)

    rows = [measure(model, int(batch), dtype, peaks[dtype], network_batch) for model in MODELS.value
            for batch in BATCHES.value for dtype in DTYPES.value for network_batch in NETWORK_BATCH.value
            if differs(int(batch), dtype, network_batch)]
    print(f"\ndetect, {benchlib.machine()}, jax {jax.__version__}\n")
    print(benchlib.markdown_table(rows, COLUMNS))
    print("\nmeasured peak, TFLOP/s: " + ", ".join(
        f"{name}: matmul {p['matmul'] / 1e12:.3g}, 3x3 conv {p['conv'] / 1e12:.3g}" for name, p in peaks.items()))
    benchlib.write_json(OUT.value, {"benchmark": "detect", "peak_flops": peaks, "rows": rows})


if __name__ == "__main__":
    app.run(main)
