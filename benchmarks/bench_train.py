"""Train-step images/s (model, matching, multibox loss, optimizer update), on all local devices.

  python benchmarks/bench_train.py                                  # ssd_tiny and ssd300, float32, batch 8
  python benchmarks/bench_train.py --models=ssd300 --batches=8,32,64 --dtypes=float32,bfloat16
  python benchmarks/bench_train.py --models=ssd300 --frozen_blocks=0,2 --gradients=xla,fast_pool --profile

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
FROZEN = flags.DEFINE_list("frozen_blocks", ["0"], "Leading base-network blocks frozen (0: all trainable; 2: the "
                           "paper's recipe with an ImageNet backbone).")
GRADIENTS = flags.DEFINE_list("gradients", ["auto"], "Gradient rules of the model (auto, xla, fast, fast_pool).")
BATCH_NORM = flags.DEFINE_bool("batch_norm", False, "Train with BatchNorms (batch statistics), as the "
                                "MobileNet and ResNet presets are trained.")
PROFILE = flags.DEFINE_bool("profile", False, "Also print the device time of the 25 costliest XLA ops of each setting.")
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


def measure(model: str, batch_size: int, dtype: str, frozen: int, gradients: str) -> dict:
    model_config = configs.get(model)
    config = train.default_config()
    config.frozen_blocks = frozen
    mesh = train.data_mesh()
    optimizer, schedule = train.make_optimizer(config), train.learning_rate_schedule(config)
    step = train.jit_train_step(model_config, optimizer, schedule, mesh, jax.numpy.dtype(dtype),
                                frozen=train.frozen_prefixes(model_config, frozen), gradients=gradients)
    from ssd_jax.models import init, init_batch_norm

    params, batch_stats = init(jax.random.key(0), model_config), None
    if BATCH_NORM.value:
        params, batch_stats = init_batch_norm(params, model_config)
    state = train.replicate(train.create_train_state(params, optimizer, batch_stats), mesh)
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
    row = {"model": model, "batch": batch_size, "dtype": dtype, "batch_norm": BATCH_NORM.value,
           "frozen_blocks": frozen, "gradients": gradients,
           "devices": jax.device_count(), "step_ms": round(seconds * 1000, 1),
           "images_per_s": round(batch_size / seconds, 2), "first_step_s": round(first_step_seconds, 1)}
    if PROFILE.value:
        holder = [state]

        def one_step():
            holder[0], metrics = step(holder[0], batch)
            return metrics

        ops = benchlib.device_time_by_op(one_step)
        print(f"\n{model} batch {batch_size} {dtype} frozen {frozen} gradients {gradients}: device time by op")
        print(benchlib.markdown_table(ops, [("op", "op"), ("ms_per_call", "ms"), ("share", "share"),
                                            ("count", "calls"), ("hlo", "HLO")]))
        row["profile"] = ops
    return row


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = [measure(model, int(batch), dtype, int(frozen), gradients) for model in MODELS.value
            for batch in BATCHES.value for dtype in DTYPES.value for frozen in FROZEN.value
            for gradients in GRADIENTS.value]
    print(f"\ntrain step, {benchlib.machine()}, jax {jax.__version__}\n")
    print(benchlib.markdown_table(rows, [("model", "model"), ("batch", "batch"), ("dtype", "dtype"),
                                         ("batch_norm", "BatchNorm"), ("frozen_blocks", "frozen blocks"),
                                         ("gradients", "gradients"),
                                         ("step_ms", "step ms"), ("images_per_s", "images/s"),
                                         ("first_step_s", "first step s")]))
    benchlib.write_json(OUT.value, {"benchmark": "train_step", "rows": rows})


if __name__ == "__main__":
    app.run(main)
