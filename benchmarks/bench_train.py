"""Train-step images/s (model, matching, multibox loss, optimizer update), on all local devices.

  python benchmarks/bench_train.py                                  # ssd_tiny and ssd300, float32, batch 8
  python benchmarks/bench_train.py --models=ssd300 --batches=8,32,64 --dtypes=float32,bfloat16

Batches are synthetic (random pixels and boxes, generated once) so that only the jitted step is
timed; the first step (compilation included) is reported apart. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import time

import benchlib
import jax
import numpy as np
from absl import app, flags, logging

from ssd_jax import configs, train

MODELS = flags.DEFINE_list("models", ["ssd_tiny", "ssd300"], "Model presets.")
BATCHES = flags.DEFINE_list("batches", ["8"], "Global batch sizes.")
DTYPES = flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes (float32, bfloat16).")
STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per setting (after one compiling step and one warm-up).")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_train.json", "JSON to write.")


def synthetic_batch(batch_size: int, image_size: int, num_classes: int, max_boxes: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 0.6, (batch_size, max_boxes, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.4, (batch_size, max_boxes, 2))], -1).astype(np.float32)
    mask = rng.random((batch_size, max_boxes)) < 0.6
    return {"image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
            "boxes": np.where(mask[..., None], boxes, 0).astype(np.float32),
            "labels": np.where(mask, rng.integers(1, num_classes, mask.shape), 0).astype(np.int32),
            "mask": mask}


def measure(model: str, batch_size: int, dtype: str) -> dict:
    model_config = configs.get(model)
    config = train.default_config()
    mesh = train.data_mesh()
    optimizer, schedule = train.make_optimizer(config), train.learning_rate_schedule(config)
    step = train.jit_train_step(model_config, optimizer, schedule, mesh, jax.numpy.dtype(dtype))
    from ssd_jax.models import init

    state = train.replicate(train.create_train_state(init(jax.random.key(0), model_config), optimizer), mesh)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batch = train.global_batch(synthetic_batch(batch_size, model_config.image_size, model_config.num_classes),
                               sharding)
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    first_step_seconds = time.perf_counter() - start
    state, metrics = step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(STEPS.value):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / STEPS.value
    return {"model": model, "batch": batch_size, "dtype": dtype, "devices": jax.device_count(),
            "step_ms": round(seconds * 1000, 1), "images_per_s": round(batch_size / seconds, 2),
            "first_step_s": round(first_step_seconds, 1)}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = [measure(model, int(batch), dtype) for model in MODELS.value for batch in BATCHES.value
            for dtype in DTYPES.value]
    print(f"\ntrain step, {benchlib.machine()}, jax {jax.__version__}\n")
    print(benchlib.markdown_table(rows, [("model", "model"), ("batch", "batch"), ("dtype", "dtype"),
                                         ("step_ms", "step ms"), ("images_per_s", "images/s"),
                                         ("first_step_s", "first step s")]))
    benchlib.write_json(OUT.value, {"benchmark": "train_step", "rows": rows})


if __name__ == "__main__":
    app.run(main)
