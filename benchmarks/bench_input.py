"""Images/s of the training input pipeline (read, decode, SSD augmentation, resize, pad, batch).

  python benchmarks/bench_input.py                                    # shapes data, SSD300 batches of 32
  python benchmarks/bench_input.py --dataset=voc --data_dir=...
  python benchmarks/bench_input.py --dataset=shapes,vocdir --folder=DIR --rounds=3   # TFDS against a folder
  python benchmarks/bench_input.py --dataset=shapes@DIR1,shapes@DIR2                  # two copies of a data set

Several data sets are measured in alternating rounds (this machine is shared and noisy), each
round a fresh pipeline, first batches (warm-up) untimed; the median round is reported. Data on
disk: --folder (a VOC folder for vocdir), --annotations/--images (cocojson, used for both
splits). Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import tensorflow as tf
from absl import app, flags, logging

from ssd_jax.data import pipeline, sources

DATASETS = flags.DEFINE_list("dataset", ["shapes"], f"Data sets to read: {', '.join(sources.names())}; "
                             "NAME@DIR reads NAME from the TFDS data directory DIR.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
FOLDER = flags.DEFINE_string("folder", None, "vocdir: the VOC folder.")
ANNOTATIONS = flags.DEFINE_string("annotations", None, "cocojson: the COCO json.")
IMAGES = flags.DEFINE_string("images", None, "cocojson: its image folder.")
IMAGE_SIZES = flags.DEFINE_list("image_sizes", ["300"], "Output sides to measure (300 = SSD300, 512 = SSD512).")
BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches per round.")
BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches per round.")
ROUNDS = flags.DEFINE_integer("rounds", 1, "Alternating rounds per data set and size (median reported).")
AUGMENT = flags.DEFINE_bool("augment", True, "SSD's augmentation (False: flips only, as the shapes recipe).")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_input.json", "JSON to write.")


def open_data(entry: str) -> sources.Source:
    name, _, directory = entry.partition("@")
    data_dir = FOLDER.value if name == "vocdir" else (directory or DATA_DIR.value)
    return sources.open_source(name, data_dir=data_dir, train_annotations=ANNOTATIONS.value,
                                train_images=IMAGES.value, eval_annotations=ANNOTATIONS.value,
                                eval_images=IMAGES.value)


def images_per_second(source: sources.Source, image_size: int) -> float:
    options = None if AUGMENT.value else {"zoom_out_probability": 0.0, "crop_probability": 0.0, "photometric": False}
    indexed = source.indexed("train")
    if indexed is not None:  # as training reads it: the global order
        dataset = pipeline.global_train_dataset(indexed, global_batch_size=BATCH.value, image_size=image_size,
                                                augment_options=options)
    else:  # TFRecord: in order, through a shuffle buffer
        dataset = pipeline.train_dataset(source.examples("train", shuffle_files=True, decode=False),
                                         batch_size=BATCH.value, image_size=image_size, augment_options=options)
    iterator = pipeline.as_numpy(dataset)
    for _ in range(WARMUP.value):
        next(iterator)
    start = time.perf_counter()
    for _ in range(BATCHES.value):
        next(iterator)
    return BATCH.value * BATCHES.value / (time.perf_counter() - start)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    sources = {name: open_data(name) for name in DATASETS.value}
    timings = {(name, int(size)): [] for name in sources for size in IMAGE_SIZES.value}
    for _ in range(ROUNDS.value):
        for (name, size), values in timings.items():
            values.append(images_per_second(sources[name], size))
    rows = [{"dataset": name, "image_size": size, "batch": BATCH.value, "augment": AUGMENT.value,
             "images_per_s": round(statistics.median(values), 1), "rounds": [round(v, 1) for v in values]}
            for (name, size), values in timings.items()]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\ninput pipeline, {machine}, tensorflow {tf.__version__}\n")
    print("| dataset | image size | batch | augmentation | images/s (median) | rounds |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['dataset']} | {row['image_size']} | {row['batch']} | {'SSD' if row['augment'] else 'flips'} "
              f"| {row['images_per_s']} | {', '.join(map(str, row['rounds']))} |")
    os.makedirs(os.path.dirname(OUT.value) or ".", exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump({"machine": machine, "date": time.strftime("%Y-%m-%d"), "tensorflow": tf.__version__,
                   "rows": rows}, f, indent=2)
    print(f"\nwrote {OUT.value}")


if __name__ == "__main__":
    app.run(main)
