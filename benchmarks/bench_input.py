"""Images/s of the training input pipeline (decode, SSD augmentation, resize, pad, batch).

  python benchmarks/bench_input.py                       # shapes data, SSD300 batches of 32
  python benchmarks/bench_input.py --dataset=voc --data_dir=...

Prints a markdown table and writes JSON. The first batches (pipeline warm-up) are not timed.
"""

from __future__ import annotations

import json
import os
import platform
import time

import tensorflow as tf
from absl import app, flags, logging

from ssd_jax.data import pipeline

DATASET = flags.DEFINE_enum("dataset", "shapes", sorted(pipeline.DATASETS), "Data set to read.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
IMAGE_SIZES = flags.DEFINE_list("image_sizes", ["300"], "Output sides to measure (300 = SSD300, 512 = SSD512).")
BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches.")
BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches.")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_input.json", "JSON to write.")


def measure(image_size: int) -> float:
    source = pipeline.tfds_source(DATASET.value, "train", data_dir=DATA_DIR.value, shuffle_files=True)
    iterator = pipeline.as_numpy(pipeline.train_dataset(source, batch_size=BATCH.value, image_size=image_size))
    for _ in range(WARMUP.value):
        next(iterator)
    start = time.perf_counter()
    for _ in range(BATCHES.value):
        next(iterator)
    return BATCH.value * BATCHES.value / (time.perf_counter() - start)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = [{"dataset": DATASET.value, "image_size": int(size), "batch": BATCH.value,
             "images_per_s": round(measure(int(size)), 1)} for size in IMAGE_SIZES.value]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\ninput pipeline, {machine}, tensorflow {tf.__version__}\n")
    print("| dataset | image size | batch | images/s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['dataset']} | {row['image_size']} | {row['batch']} | {row['images_per_s']} |")
    os.makedirs(os.path.dirname(OUT.value) or ".", exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump({"machine": machine, "date": time.strftime("%Y-%m-%d"), "tensorflow": tf.__version__,
                   "rows": rows}, f, indent=2)
    print(f"\nwrote {OUT.value}")


if __name__ == "__main__":
    app.run(main)
