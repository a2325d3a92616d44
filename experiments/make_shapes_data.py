"""Writes the synthetic shapes data set as files, in the layouts users' own labelled data comes in.

  python experiments/make_shapes_data.py --format=voc --out=data/shapes_voc --count=400
  python experiments/make_shapes_data.py --format=coco --out=data/shapes_coco --count=400 --seed=1

voc:  OUT/JPEGImages/*.jpg, OUT/Annotations/*.xml, OUT/ImageSets/Main/{trainval,test}.txt
coco: OUT/{train2017,val2017}/*.jpg, OUT/annotations/instances_{train2017,val2017}.json
      (category ids 3, 7, 11, 17, 42 for circle, square, triangle, star, hexagon)

The same --seed writes the same images, boxes and split in both formats. Prints a JSON summary
(images per split, objects per class) to stdout and the time taken to stderr.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags

FORMAT = flags.DEFINE_enum("format", None, ["voc", "coco"], "Layout to write: a VOC folder or a COCO json.")
OUT = flags.DEFINE_string("out", None, "Directory to write; created, and it must be empty unless --overwrite.")
COUNT = flags.DEFINE_integer("count", 400, "Number of images.", lower_bound=1)
SEED = flags.DEFINE_integer("seed", 0, "Fixes the images, the difficult/crowd flags and the split.", lower_bound=0)
TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.25, "Fraction of the images in the test (voc) or val2017 "
                                   "(coco) split.", lower_bound=0.0, upper_bound=1.0)
NO_SPLIT_FILES = flags.DEFINE_bool("no_split_files", False, "voc only: leave out ImageSets/Main/{trainval,test}.txt, "
                                   "so that readers choose the split.")
JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the images.", lower_bound=1,
                                    upper_bound=100)
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Write into a non-empty --out, replacing the folders this "
                              "format writes there (anything else in it stays).")
flags.mark_flags_as_required(["format", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FORMAT.value == "coco" and NO_SPLIT_FILES.value:
        raise app.UsageError("--no_split_files applies to --format=voc only (COCO's split is its two json files)")
    from ssd_jax.data import shapes  # after flag parsing: it imports TensorFlow, so --help stays quick

    options = {"seed": SEED.value, "test_fraction": TEST_FRACTION.value, "jpeg_quality": JPEG_QUALITY.value,
               "overwrite": OVERWRITE.value}
    start = time.perf_counter()
    try:
        if FORMAT.value == "voc":
            summary = shapes.write_voc_folder(OUT.value, COUNT.value, split_files=not NO_SPLIT_FILES.value, **options)
        else:
            summary = shapes.write_coco_json(OUT.value, COUNT.value, **options)
    except (FileExistsError, NotADirectoryError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(json.dumps(summary, indent=2))
    print(f"wrote {COUNT.value} images ({FORMAT.value}) to {OUT.value} in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)  # stdout stays pure JSON


if __name__ == "__main__":
    app.run(main)
