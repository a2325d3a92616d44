"""Smoke run of the whole inference program on random weights: pixels -> detections.

  python experiments/smoke_detect.py                      # ssd_tiny, CPU, seconds
  python experiments/smoke_detect.py --config=ssd300 --batch=8

Builds the model, compiles ``ssd_jax.detect`` once, runs it on synthetic images, prints the
throughput and the first detections. The weights are random, so the boxes mean nothing: this
checks the installation and the compiled program, not the detector.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags, logging

import ssd_jax

CONFIG = flags.DEFINE_enum("config", "ssd_tiny", sorted(ssd_jax.configs.PRESETS), "Model preset.")
BATCH = flags.DEFINE_integer("batch", 4, "Images per call.")
SIZE = flags.DEFINE_integer("image_size", 240, "Side of the synthetic input images (resized inside detect).")
REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the compiling one.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # JAX logs its probe for a TPU at INFO
    config = ssd_jax.configs.get(CONFIG.value)
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}: {config.name}, {config.num_priors} default boxes, "
          f"{config.num_classes} classes")
    params = ssd_jax.init(jax.random.key(0), config)
    count = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
    print(f"random parameters: {count:,}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH.value, SIZE.value, SIZE.value, 3), dtype=np.uint8)

    start = time.perf_counter()
    detections = jax.block_until_ready(ssd_jax.detect(params, images, config=config))
    print(f"compile + first call: {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    for _ in range(REPEATS.value):
        detections = jax.block_until_ready(ssd_jax.detect(params, images, config=config))
    seconds = (time.perf_counter() - start) / REPEATS.value
    print(f"detect: {seconds * 1000:.0f} ms per batch of {BATCH.value}, {BATCH.value / seconds:.1f} images/s")

    print(f"detections per image: {np.asarray(detections.num_detections).tolist()}; first image's best three:")
    for box, score, cls in list(zip(detections.boxes[0], detections.scores[0], detections.classes[0]))[:3]:
        print(f"  class {int(cls):2d}  score {float(score):.3f}  box (xmin, ymin, xmax, ymax) "
              f"{np.round(np.asarray(box, np.float64), 3).tolist()}")


if __name__ == "__main__":
    app.run(main)
