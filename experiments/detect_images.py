r"""Runs a trained or converted SSD on image files: draws the detections and writes COCO results.

  python experiments/detect_images.py --checkpoint=runs/shapes/params photo1.jpg photo2.png
  python experiments/detect_images.py --weights=ssd300_vgg16_coco.pth --format=torchvision *.jpg

Each image is read upright (its EXIF orientation applied), resized to the model's input and
detected in batches of --batch_size (the last one padded), so that one compilation serves images
of any sizes. OUT_DIR receives:

  <name>.png       the image at its own size with its detections (score >= --min_score) drawn.
                   <name> is the input's file name without its extension; inputs sharing one get
                   _1, _2, ... in command-line order (d1/x.jpg -> x.png, d2/x.jpg -> x_1.png).
  detections.json  every detection drawn, in COCO results format: image_id (the input's position
                   on the command line, from 0), category_id (the source's own category id for a
                   model trained on a COCO json, else the class number), bbox ([x, y, width, height]
                   in pixels of the upright image) and score, plus category_name, file_name (the
                   input's base name), path (the input path as given) and picture (its PNG in OUT_DIR).

Class names come with the checkpoint (training and convert_weights.py store them); --class_names
overrides them.

Every file is written under a temporary name and then renamed, so none is ever half written, and
detections.json is rewritten after each image: when a run stops (a full disk, Ctrl-C) it holds the
detections of every image whose picture was written. A file that cannot be read as an image is
reported and skipped; the others are still processed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

import numpy as np
from absl import app, flags, logging

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "ssd_jax parameter checkpoint (e.g. WORKDIR/params).")
WEIGHTS = flags.DEFINE_string("weights", None, "Or a published weight file (.pth/.npz/.safetensors).")
FORMAT = flags.DEFINE_enum("format", "torchvision", ["torchvision", "amdegroot"], "Layout of --weights.")
OUT_DIR = flags.DEFINE_string("out_dir", "out/detections", "Where to write the pictures and detections.json.")
SCORE = flags.DEFINE_float("min_score", 0.3, "Draw and save detections scoring at least this.",
                           lower_bound=0.0, upper_bound=1.0)
BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per detect call (the last batch is padded: one "
                                  "compilation for all).", lower_bound=1)
CLASS_NAMES = flags.DEFINE_list("class_names", None, "Names of classes 1..C-1 (default: those stored with the "
                                "checkpoint, else from the data set "
                                "the model's class count suggests: VOC 21, COCO 81/91, shapes 6).")



def load_model():
    from ssd_jax import checkpoint, weights

    if bool(CHECKPOINT.value) == bool(WEIGHTS.value):
        sys.exit("error: give exactly one of --checkpoint=DIR or --weights=FILE")
    try:
        if CHECKPOINT.value:  # its class names travel with it (training and convert_weights store them)
            params, config = checkpoint.load_params(CHECKPOINT.value)
            return params, config, checkpoint.load_metadata(CHECKPOINT.value)
        state_dict = weights.load_state_dict(WEIGHTS.value)
        if FORMAT.value == "torchvision":
            return weights.from_torchvision(state_dict), weights.torchvision_config(state_dict), {}
        return weights.from_amdegroot(state_dict), weights.amdegroot_config(state_dict), {}
    except (FileNotFoundError, ValueError, ImportError) as error:
        sys.exit(f"error: {error}\n(train a model with experiments/train_voc.py, or convert published weights with "
                 f"experiments/convert_weights.py)")


def class_names(num_classes: int, stored=None):
    """--class_names (checked against the model), else the names stored with the checkpoint, else
    those of the known data set with that many classes; exits on a wrong count."""
    from ssd_jax.classes import names_for_class_count

    if CLASS_NAMES.value is None:
        return stored or names_for_class_count(num_classes)
    if len(CLASS_NAMES.value) != num_classes - 1:
        sys.exit(f"error: --class_names has {len(CLASS_NAMES.value)} names but the model has {num_classes} classes: "
                 f"give {num_classes - 1} names, for classes 1..{num_classes - 1} (class 0 is the background)")
    return CLASS_NAMES.value


def picture_names(paths: list[str]) -> list[str]:
    """'<stem>.png' for each input path, made unique (ignoring case) with _1, _2, ... in order."""
    taken, names = set(), []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, suffix = f"{stem}.png", 0
        while name.lower() in taken:  # lower case: one file on case-insensitive file systems
            suffix += 1
            name = f"{stem}_{suffix}.png"
        taken.add(name.lower())
        names.append(name)
    return names


def check_out_dir(path: str) -> None:
    """Creates ``path`` and writes a file there, or exits saying why, before any image is processed."""
    try:
        os.makedirs(path, exist_ok=True)
        write_atomically(os.path.join(path, f".write_test.{os.getpid()}"), b"")
        os.remove(os.path.join(path, f".write_test.{os.getpid()}"))
    except OSError as error:
        sys.exit(f"error: cannot write to --out_dir={path} ({error})")


def write_atomically(path: str, data: bytes) -> None:
    """Writes ``path`` through a temporary file in its directory and a rename: an error (a full
    disk) or an interruption never leaves a partial ``path``, nor the temporary file."""
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def coco_results(image_id: int, path: str, picture: str, boxes, scores, classes, height: int, width: int, *,
                 names=None, category_ids=None):
    """One image's detections (normalised xyxy boxes) -> COCO result dicts with pixel xywh boxes
    (``ssd_jax.evaluation.to_coco_results``): category_id the source's own id (``category_ids``,
    for a model trained on a COCO json) or the class number, category_name, and where the image and
    its picture are."""
    from ssd_jax.evaluation import ImageDetections, to_coco_results

    detections = ImageDetections(image_id, boxes, scores, classes)
    results = to_coco_results([detections], image_sizes={image_id: (height, width)}, category_ids=category_ids)
    return [{**result, "category_name": names[int(label) - 1] if names else str(int(label)),
             "file_name": os.path.basename(path), "path": path, "picture": picture}
            for result, label in zip(results, classes)]


def read_batch(paths: list[str], first_id: int):
    """(image_id, path, uint8 image) of each readable path; the others are reported on stderr."""
    from ssd_jax.image_io import read_image

    readable = []
    for image_id, path in enumerate(paths, first_id):
        try:
            readable.append((image_id, path, read_image(path)))
        except (OSError, ValueError) as error:  # missing, unreadable or corrupt: report and go on
            print(f"skipped {path}: cannot read it as an image ({error})", file=sys.stderr)
    return readable


def main(argv):
    logging.set_verbosity(logging.WARNING)
    paths = argv[1:]
    if not paths:
        sys.exit("error: name one or more image files after the flags")
    out_dir = OUT_DIR.value
    check_out_dir(out_dir)
    params, config, metadata = load_model()
    names = class_names(config.num_classes, metadata.get("class_names"))
    category_ids = metadata.get("category_ids")

    import jax

    import ssd_jax
    from ssd_jax import visualize

    pictures = picture_names(paths)
    json_path = os.path.join(out_dir, "detections.json")
    batch_size = min(BATCH_SIZE.value, len(paths))
    # Fills the last batch: the compiled program keeps one shape.
    padding = np.zeros((config.image_size, config.image_size, 3), np.uint8)
    results, done = [], 0
    write_atomically(json_path, b"[]")  # not a previous run's detections, should this one stop early
    for start in range(0, len(paths), batch_size):
        batch = read_batch(paths[start:start + batch_size], start)
        if not batch:
            continue
        images = [image for _, _, image in batch]
        detections = ssd_jax.detect(params, images + [padding] * (batch_size - len(images)), config=config)
        detections = jax.device_get(detections)  # numpy: indexing it per image compiles nothing
        for index, (image_id, path, image) in enumerate(batch):
            boxes, scores, classes = visualize.image_detections(detections, index, SCORE.value)
            out_path = os.path.join(out_dir, pictures[image_id])
            try:
                write_atomically(out_path, png_bytes(visualize.draw_boxes(image, boxes, classes, scores, names)))
                results += coco_results(image_id, path, pictures[image_id], boxes, scores, classes, *image.shape[:2],
                                        names=names, category_ids=category_ids)
                write_atomically(json_path, json.dumps(results, indent=1).encode())
            except OSError as error:
                sys.exit(f"error: cannot write to {out_dir} ({error}); stopped after {done} image(s), whose "
                         f"pictures and detections ({json_path}) are complete")
            done += 1
            print(f"{path}: {len(scores)} detections >= {SCORE.value} -> {out_path}")
    failures = len(paths) - done
    print(f"wrote {len(results)} detections of {done} images to {json_path}"
          + (f"; {failures} file(s) skipped" if failures else ""))
    if not done:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
