"""Draws one augmented training batch with its boxes, to check the input pipeline by eye.

  python experiments/show_batch.py                     # built-in shapes data -> out/train_batch.png
  python experiments/show_batch.py --dataset=voc --data_dir=~/tensorflow_datasets --image_size=300
  python experiments/show_batch.py --dataset=vocdir --data_dir=MY_VOC_FOLDER      # your own data
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from ssd_jax import files, visualize
from ssd_jax.data import pipeline, sources

# The registered data sets, and a flag for each field they read (--data_dir, --train_annotations, ...).
DATASET = flags.DEFINE_enum("dataset", "shapes", list(sources.names()), f"Data set: {sources.describe()}.")
DATA_FIELDS = {name: flags.DEFINE_string(name, field.default, field.help)
               for name, field in sources.all_fields().items()}
flags.DEFINE_alias("annotations", "train_annotations")
flags.DEFINE_alias("images", "train_images")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 160, "Training image side.")
BATCH = flags.DEFINE_integer("batch", 16, "Images in the picture.")
SEED = flags.DEFINE_integer("seed", 0, "Augmentation seed.")
OUT = flags.DEFINE_string("out", "out/train_batch.png", "PNG to write.")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a picture that an earlier show_batch.py wrote at --out "
                              "(never another file).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        files.check_writable(os.path.dirname(OUT.value) or ".")
        files.claim(OUT.value, overwrite=OVERWRITE.value, is_ours=files.is_our_png, what="a picture")
    except OSError as error:  # OutputExistsError included
        sys.exit(f"error: {error}")
    try:  # VOC/COCO need a download first, folders must exist: say so, no traceback
        source = sources.open_source(DATASET.value, **{name: flag.value for name, flag in DATA_FIELDS.items()})
        examples = source.examples("train")
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    ds = pipeline.train_dataset(examples, batch_size=BATCH.value, image_size=IMAGE_SIZE.value, seed=SEED.value)
    batch = next(pipeline.as_numpy(ds))
    pictures = [visualize.draw_boxes(image, boxes[mask], labels[mask], class_names=source.class_names)
                for image, boxes, labels, mask in zip(batch["image"], batch["boxes"], batch["labels"], batch["mask"])]
    files.write_png(OUT.value, visualize.grid(pictures, columns=4))
    print(f"wrote {OUT.value}: {BATCH.value} augmented {DATASET.value} images, {int(batch['mask'].sum())} boxes")


if __name__ == "__main__":
    app.run(main)
