"""Draws one augmented training batch with its boxes, to check the input pipeline by eye.

  python experiments/show_batch.py                     # built-in shapes data -> out/train_batch.png
  python experiments/show_batch.py --dataset=voc --data_dir=~/tensorflow_datasets --image_size=300
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from ssd_jax import visualize
from ssd_jax.data import pipeline

DATASET = flags.DEFINE_enum("dataset", "shapes", sorted(pipeline.DATASETS), "Data set to read.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's).")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 160, "Training image side.")
BATCH = flags.DEFINE_integer("batch", 16, "Images in the picture.")
SEED = flags.DEFINE_integer("seed", 0, "Augmentation seed.")
OUT = flags.DEFINE_string("out", "out/train_batch.png", "PNG to write.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    spec = pipeline.DATASETS[DATASET.value]
    try:
        source = pipeline.tfds_source(DATASET.value, "train", data_dir=DATA_DIR.value)
    except pipeline.DatasetNotPreparedError as error:  # VOC/COCO need a download first: say how, no traceback
        sys.exit(f"error: {error}")
    ds = pipeline.train_dataset(source, batch_size=BATCH.value, image_size=IMAGE_SIZE.value, seed=SEED.value)
    batch = next(pipeline.as_numpy(ds))
    pictures = [visualize.draw_boxes(image, boxes[mask], labels[mask], class_names=spec.class_names)
                for image, boxes, labels, mask in zip(batch["image"], batch["boxes"], batch["labels"], batch["mask"])]
    os.makedirs(os.path.dirname(OUT.value) or ".", exist_ok=True)
    visualize.grid(pictures, columns=4).save(OUT.value)
    print(f"wrote {OUT.value}: {BATCH.value} augmented {DATASET.value} images, {int(batch['mask'].sum())} boxes")


if __name__ == "__main__":
    app.run(main)
