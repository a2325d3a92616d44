r"""Runs a trained or converted SSD on image files: draws the detections and writes COCO results.

  python experiments/detect_images.py --checkpoint=runs/shapes/params photo1.jpg photo2.png
  python experiments/detect_images.py --weights=ssd300_vgg16_coco.pth --format=torchvision *.jpg

For each image, OUT_DIR/<name>.png shows its boxes with class names and scores; OUT_DIR/
detections.json holds every detection in COCO results format (image_id = the file's position
in the list, bbox = [x, y, width, height] in pixels). A file that cannot be read is reported and
skipped; the others are still processed.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags, logging

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "ssd_jax parameter checkpoint (e.g. WORKDIR/params).")
WEIGHTS = flags.DEFINE_string("weights", None, "Or a published weight file (.pth/.npz/.safetensors).")
FORMAT = flags.DEFINE_enum("format", "torchvision", ["torchvision", "amdegroot"], "Layout of --weights.")
OUT_DIR = flags.DEFINE_string("out_dir", "out/detections", "Where to write the pictures and detections.json.")
SCORE = flags.DEFINE_float("min_score", 0.3, "Draw and save detections scoring at least this.")
CLASS_NAMES = flags.DEFINE_list("class_names", None, "Names of classes 1..C-1 (default: from the data set "
                                "the model's class count suggests: VOC 21, COCO 81/91, shapes 6).")


def load_model():
    from ssd_jax import checkpoint, weights

    if bool(CHECKPOINT.value) == bool(WEIGHTS.value):
        sys.exit("error: give exactly one of --checkpoint=DIR or --weights=FILE")
    try:
        if CHECKPOINT.value:
            return checkpoint.load_params(CHECKPOINT.value)
        state_dict = weights.load_state_dict(WEIGHTS.value)
        if FORMAT.value == "torchvision":
            return weights.from_torchvision(state_dict), weights.torchvision_config(state_dict)
        return weights.from_amdegroot(state_dict), weights.amdegroot_config(state_dict)
    except (FileNotFoundError, ValueError, ImportError) as error:
        sys.exit(f"error: {error}\n(train a model with experiments/train_voc.py, or convert published weights with "
                 f"experiments/convert_weights.py)")


def default_class_names(num_classes: int):
    from ssd_jax.classes import COCO_CLASS_NAMES, VOC_CLASS_NAMES
    from ssd_jax.data.shapes import CLASS_NAMES as SHAPES

    if num_classes == 91:  # torchvision's COCO head indexes by COCO category id
        from ssd_jax.classes import COCO_CATEGORY_IDS

        names = [str(k) for k in range(1, 91)]
        for category, name in zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES):
            names[category - 1] = name
        return names
    return {21: VOC_CLASS_NAMES, 81: COCO_CLASS_NAMES, len(SHAPES) + 1: SHAPES}.get(num_classes)


def main(argv):
    logging.set_verbosity(logging.WARNING)
    paths = argv[1:]
    if not paths:
        sys.exit("error: name one or more image files after the flags")
    import ssd_jax
    from ssd_jax import visualize
    from ssd_jax.data.local import read_image

    params, config = load_model()
    names = CLASS_NAMES.value or default_class_names(config.num_classes)
    os.makedirs(OUT_DIR.value, exist_ok=True)
    results, failures = [], 0
    for image_id, path in enumerate(paths):
        try:
            image = read_image(path)
        except (OSError, ValueError) as error:  # missing, unreadable or corrupt: report and go on
            failures += 1
            print(f"skipped {path}: cannot read it as an image ({error})", file=sys.stderr)
            continue
        detections = ssd_jax.detect(params, image[None], config=config)
        boxes, scores, classes = visualize.image_detections(detections, 0, SCORE.value)
        picture = visualize.draw_boxes(image, boxes, classes, scores, names)
        out_path = os.path.join(OUT_DIR.value, os.path.splitext(os.path.basename(path))[0] + ".png")
        picture.save(out_path)
        height, width = image.shape[:2]
        pixels = boxes * np.array([width, height, width, height])
        for box, score, cls in zip(pixels, scores, classes):
            results.append({"image_id": image_id, "file_name": os.path.basename(path), "category_id": int(cls),
                            "bbox": [round(float(box[0]), 2), round(float(box[1]), 2),
                                     round(float(box[2] - box[0]), 2), round(float(box[3] - box[1]), 2)],
                            "score": round(float(score), 5)})
        print(f"{path}: {len(scores)} detections >= {SCORE.value} -> {out_path}")
    with open(os.path.join(OUT_DIR.value, "detections.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {len(results)} detections of {len(paths) - failures} images to "
          f"{os.path.join(OUT_DIR.value, 'detections.json')}" + (f"; {failures} file(s) skipped" if failures else ""))
    if failures == len(paths):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
