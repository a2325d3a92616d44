r"""Runs a trained, converted or published detector on images, videos and cameras: draws the
detections and writes them down.

  python experiments/detect.py --checkpoint=runs/shapes/params --out_dir=out/detections photo1.jpg photos/ 'shots/*.png'
  python experiments/detect.py --weights=ssd300_vgg16_coco.pth --format=torchvision *.jpg
  python experiments/detect.py --weights=res10.caffemodel --format=caffe --prototxt=deploy.prototxt \
      --class_names=face --min_score=0.5 photo.jpg

  python experiments/detect.py --checkpoint=runs/shapes/params --out_dir=out/video clip.mp4 --every_n=2
  python experiments/detect.py --checkpoint=runs/shapes/params camera:0 --max_frames=300

A source is an image file, a folder (the images in it, by name, not its subfolders), a glob
pattern (quote it: 'shots/*.png'), a video file (.mp4, .avi, .mov, .mkv, .webm) or camera:N.
Each image is read upright (its EXIF orientation applied),
resized to the model's input and detected in batches of --batch_size (the last one padded), so
that one compilation serves images of any sizes. OUT_DIR receives:

  <name>.png       the image at its own size with its detections (score >= --min_score) drawn.
                   <name> is the input's file name without its extension; inputs sharing one get
                   _1, _2, ... in order (d1/x.jpg -> x.png, d2/x.jpg -> x_1.png).
  detections.json  every detection drawn, in COCO results format: image_id (the image's position
                   in the expanded list of sources, from 0), category_id (the source's own category
                   id for a model trained on a COCO json, else the class number), bbox ([x, y, width,
                   height] in pixels of the upright image) and score, plus category_name, file_name
                   (the input's base name), path (the input path) and picture (its PNG in OUT_DIR).

Class names come with the checkpoint (training and convert_weights.py store them); --class_names
overrides them. Outputs of an earlier run in OUT_DIR are replaced only with --overwrite, and
files that ssd_jax did not write (your own pictures, say) never are.

Every file is written under a temporary name and then renamed, so none is ever half written, and
detections.json is rewritten after each image: when a run stops (a full disk, Ctrl-C) it holds the
detections of every image whose picture was written. A source that is missing or not a readable
image is reported and skipped; the others are still processed.

A video clip.mp4 (or a camera, as camera_N) gives OUT_DIR/clip.mp4, every frame with its
detections drawn, at the source's size and frame rate, and OUT_DIR/clip.jsonl, one line per frame
in order: {"frame": i, "time": seconds, "detected": true, "detections": [{"bbox": [x, y, w, h]
pixels, "score", "category_id", "category_name"}]}. With --every_n=N only every N-th frame is
detected; the frames between carry the last detections ("detected": false). Frames are decoded
and resized on a thread while the device detects (ssd_jax.detect_stream); both files are written
under temporary names and finished on exit, Ctrl-C included, so they hold every frame done.
Frames that fail to decode are skipped and counted. Videos need pip install -e '.[video]'.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time

import numpy as np
from absl import app, flags, logging

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "ssd_jax parameter checkpoint (e.g. WORKDIR/params).")
WEIGHTS = flags.DEFINE_string("weights", None, "Or a published weight file (.pth/.npz/.safetensors, or a Caffe "
                              ".caffemodel with --format=caffe).")
FORMAT = flags.DEFINE_enum("format", "torchvision", ["torchvision", "amdegroot", "nvidia", "caffe"],
                           "Layout of --weights.")
PROTOTXT = flags.DEFINE_string("prototxt", None, "--format=caffe: the deploy prototxt of the caffemodel.")
MEAN_BGR = flags.DEFINE_list("mean_bgr", None, "--format=caffe: the BGR mean the model was trained with (default: "
                             "the prototxt's transform_param, else 104,117,123).")
OUT_DIR = flags.DEFINE_string("out_dir", "out/detections", "Where to write the pictures and detections.json.")
SCORE = flags.DEFINE_float("min_score", 0.3, "Draw and save detections scoring at least this.",
                           lower_bound=0.0, upper_bound=1.0)
IOU = flags.DEFINE_float("iou_threshold", None, "NMS IoU threshold (default: the model's, 0.45 for SSD).",
                         lower_bound=0.0, upper_bound=1.0)
MAX_DETECTIONS = flags.DEFINE_integer("max_detections", None, "Detections kept per image (default: the model's, "
                                      "200 for SSD).", lower_bound=1)
BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per detect call (the last batch is padded: one "
                                  "compilation for all).", lower_bound=1)
CLASS_NAMES = flags.DEFINE_list("class_names", None, "Names of classes 1..C-1 (default: those stored with the "
                                "checkpoint, else from the data set the model's class count suggests: VOC 21, "
                                "COCO 81/91, shapes 6).")
EVERY_N = flags.DEFINE_integer("every_n", 1, "Videos: detect every n-th frame (all frames are written).",
                               lower_bound=1)
MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Videos and cameras: stop after this many frames.",
                                  lower_bound=1)
START = flags.DEFINE_float("start", 0.0, "Videos: start at this time, in seconds.", lower_bound=0.0)
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace pictures and detections.json that an earlier run wrote "
                              "in --out_dir (never other files).")


def fail(message: str):
    """Exits with ``message`` on one line of stderr (exit code 1)."""
    sys.exit(f"error: {message}")


# ----------------------------------------------------------------------------- sources
def is_image_file(path: str) -> bool:
    from ssd_jax.image_io import is_image_file  # here: the script starts without importing jax

    return is_image_file(path)


def is_video_source(path: str) -> bool:
    from ssd_jax.video import is_video  # no PyAV needed for the name

    return is_video(path)


def expand_sources(sources: list[str]) -> tuple[list[str], list[str]]:
    """Command-line sources -> (image paths in order, problems: one line per source that names nothing).

    A folder gives its image files by name; a pattern with * ? or [ gives its matches by name; a
    path is taken as it is (unreadable ones are reported when read)."""
    from ssd_jax.image_io import IMAGE_EXTENSIONS

    paths, problems = [], []
    for source in sources:
        if os.path.isdir(source):
            found = sorted(os.path.join(source, name) for name in os.listdir(source)
                           if (is_image_file(name) or is_video_source(name))
                           and os.path.isfile(os.path.join(source, name)))
            if not found:
                problems.append(f"skipped {source}: a folder without image or video files "
                                f"({', '.join(IMAGE_EXTENSIONS)}, or videos)")
            paths += found
        elif glob.has_magic(source) and not os.path.exists(source):
            found = sorted(path for path in glob.glob(source) if os.path.isfile(path))
            if not found:
                problems.append(f"skipped {source}: no file matches this pattern")
            paths += found
        else:
            paths.append(source)
    return paths, problems


# ----------------------------------------------------------------------------- the model
def load_model():
    """(params, config, metadata) of --checkpoint or --weights, or exits saying what is wrong."""
    from ssd_jax import weights

    if bool(CHECKPOINT.value) == bool(WEIGHTS.value):
        fail("give exactly one of --checkpoint=DIR or --weights=FILE")
    mean = None
    if MEAN_BGR.value:
        try:
            mean = tuple(float(m) for m in MEAN_BGR.value)
        except ValueError:
            mean = ()
        if len(mean) != 3:
            fail(f"--mean_bgr needs three numbers (B, G, R), got {','.join(MEAN_BGR.value)}")
    try:
        return weights.load_detector(checkpoint=CHECKPOINT.value, weights=WEIGHTS.value, format=FORMAT.value,
                                     prototxt=PROTOTXT.value, mean_bgr=mean)
    except (FileNotFoundError, ValueError, ImportError, OSError) as error:
        fail(f"{error}\n(train a model with experiments/train.py, or convert published weights with "
             f"experiments/convert_weights.py)")


def class_names(num_classes: int, stored=None):
    """--class_names (checked against the model), else the names stored with the checkpoint, else
    those of the known data set with that many classes; exits on a wrong count."""
    from ssd_jax.classes import names_for_class_count

    if CLASS_NAMES.value is None:
        return stored or names_for_class_count(num_classes)
    if len(CLASS_NAMES.value) != num_classes - 1:
        fail(f"--class_names has {len(CLASS_NAMES.value)} names but the model has {num_classes} classes: "
             f"give {num_classes - 1} names, for classes 1..{num_classes - 1} (class 0 is the background)")
    return CLASS_NAMES.value


def detect_options(config) -> dict:
    """``ssd_jax.detect``'s post-processing options from the flags, checked against the model."""
    from ssd_jax.detect import postprocess_options

    defaults = postprocess_options(config)
    options = {"iou_threshold": IOU.value, "max_detections": MAX_DETECTIONS.value}
    if IOU.value is not None and IOU.value <= 0:
        fail(f"--iou_threshold={IOU.value}: must be above 0 (at 0 every overlapping box is suppressed)")
    if SCORE.value < defaults.score_threshold:
        print(f"note: --min_score={SCORE.value} is below the model's candidate threshold "
              f"{defaults.score_threshold}: nothing scoring less than that is detected", file=sys.stderr)
    return {key: value for key, value in options.items() if value is not None}


# ----------------------------------------------------------------------------- outputs
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


def is_our_detections_json(path: str) -> bool:
    """Whether ``path`` is a detections.json that this script wrote (COCO results with our fields)."""
    from ssd_jax import files

    value = files.read_json(path)
    return isinstance(value, list) and all(isinstance(entry, dict) and {"image_id", "bbox", "score", "picture"}
                                           <= set(entry) for entry in value)


def claim_outputs(out_dir: str, pictures: list[str], inputs: list[str], videos: list[str]) -> None:
    """Exits unless every file this run will write in ``out_dir`` is free, or (with --overwrite) an
    output of an earlier run; an input is never written over."""
    from ssd_jax import files

    outputs = [os.path.join(out_dir, name) for name in pictures]
    outputs += [path for source in videos for path in video_outputs(source, out_dir)]
    inputs_real = {os.path.realpath(path) for path in inputs}
    clashes = [path for path in outputs if os.path.realpath(path) in inputs_real]
    if clashes:
        fail(f"{clashes[0]} is one of the input images and would be overwritten by its own picture: write the "
             f"pictures to another --out_dir")

    def ours(path):
        if path.endswith(".json"):
            return is_our_detections_json(path)
        if path.endswith(".jsonl"):
            return is_our_jsonl(path)
        if is_video_source(path):
            from ssd_jax.video import is_our_video

            return is_our_video(path)
        return files.is_our_png(path)

    json_files = [os.path.join(out_dir, "detections.json")] if pictures else []
    try:
        files.claim_all([*outputs, *json_files], overwrite=OVERWRITE.value,
                        is_ours=ours, what="pictures or detections")
    except files.OutputExistsError as error:
        fail(str(error))


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


# ----------------------------------------------------------------------------- videos
def video_outputs(source: str, out_dir: str) -> tuple[str, str]:
    """OUT_DIR/<stem><suffix> (the annotated video, a camera's as .mp4) and OUT_DIR/<stem>.jsonl."""
    if source.startswith("camera:"):
        stem, suffix = "camera_" + source.split(":", 1)[1], ".mp4"
    else:
        stem, suffix = os.path.splitext(os.path.basename(source))
    return os.path.join(out_dir, stem + suffix.lower()), os.path.join(out_dir, stem + ".jsonl")


def is_our_jsonl(path: str) -> bool:
    try:
        with open(path) as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"frame", "time", "detections"} <= set(first)


def frame_record(index, seconds, detected, boxes, scores, classes, height, width, names, category_ids) -> dict:
    """One frame's JSONL line: its detections as detections.json holds an image's (pixel
    [x, y, w, h] boxes, score, category id and name)."""
    results = coco_results(index, "", "", boxes, scores, classes, height, width, names=names,
                           category_ids=category_ids)
    detections = [{key: result[key] for key in ("bbox", "score", "category_id", "category_name")}
                  for result in results]
    return {"frame": index, "time": round(seconds, 4), "detected": detected, "detections": detections}


def detect_video(source: str, out_dir: str, params, config, options, names, category_ids) -> bool:
    """Detects on every frame of a video or camera; writes its annotated video and JSONL. Returns
    whether the source could be read (a failure is one line on stderr)."""
    import collections

    import tqdm

    import ssd_jax
    from ssd_jax import files, video, visualize

    try:
        reader = video.open_video(source)
    except video.VideoError as error:
        print(f"skipped {error}", file=sys.stderr)
        return False
    video_path, jsonl_path = video_outputs(source, out_dir)
    try:
        writer = video.VideoWriter(video_path, fps=reader.fps, width=reader.width, height=reader.height)
    except video.VideoError as error:
        reader.close()
        fail(str(error))
    partial_jsonl = files.temporary_name(jsonl_path)
    read = collections.deque()  # frames read, in order, until written
    every_n = EVERY_N.value

    def to_detect():
        for frame in reader.frames(start=START.value, max_frames=MAX_FRAMES.value):
            read.append(frame)
            if frame.index % every_n == 0:
                yield frame.pixels

    first_result, written_before = None, 0
    interrupted = []  # Ctrl-C is taken at the next frame boundary
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    last = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    total = MAX_FRAMES.value or reader.frame_count or None
    written = 0
    progress = tqdm.tqdm(total=total, desc=os.path.basename(video_path), unit="frame")
    with open(partial_jsonl, "w") as lines:
        def write(frame, detected):
            nonlocal written
            boxes, scores, classes = last
            picture = visualize.draw_boxes(frame.pixels, boxes, classes, scores, names)
            writer.write(np.asarray(picture))
            record = frame_record(written, frame.time, detected, boxes, scores, classes, *frame.pixels.shape[:2],
                                  names, category_ids)
            lines.write(json.dumps(record) + "\n")
            written += 1
            progress.update(1)
            if interrupted:  # between frames, so that the video and the JSONL hold the same ones
                raise KeyboardInterrupt

        try:
            stream = ssd_jax.detect_stream(params, to_detect(), config=config, batch_size=BATCH_SIZE.value,
                                           **options)
            for result in stream:
                if first_result is None:  # the first batch carries the compilation: timed from here
                    first_result, written_before = time.perf_counter(), written
                while read[0].index % every_n:  # frames between detections: the last ones drawn
                    write(read.popleft(), False)
                last = visualize.image_detections(result, 0, SCORE.value)
                write(read.popleft(), True)
            while read:
                write(read.popleft(), False)
        finally:  # also on Ctrl-C or a full disk: a playable video and a valid JSONL of the frames done
            progress.close()
            lines.close()
            os.replace(partial_jsonl, jsonl_path)
            writer.close()
            reader.close()
            signal.signal(signal.SIGINT, previous_handler)
    skipped = f"; {reader.skipped} damaged packet(s) skipped" if reader.skipped else ""
    rate = ""
    if first_result is not None and written - written_before > BATCH_SIZE.value:
        # After the first batch: its compilation is not the pipeline's pace.
        steady = written - written_before - BATCH_SIZE.value
        rate = f"; {steady / (time.perf_counter() - first_result):.2f} frames/s after the first batch"
    print(f"{source}: {written} frames -> {video_path}, {jsonl_path}{skipped}{rate}")
    return True


# ----------------------------------------------------------------------------- main
def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) < 2:
        fail("name one or more images, folders or patterns after the flags")
    paths, problems = expand_sources(argv[1:])
    for problem in problems:
        print(problem, file=sys.stderr)
    if not paths:
        fail("no image or video to detect on")
    videos = [path for path in paths if is_video_source(path)]
    paths = [path for path in paths if not is_video_source(path)]
    from ssd_jax import files

    out_dir = OUT_DIR.value
    try:
        files.check_writable(out_dir)
    except OSError as error:
        fail(f"cannot write to --out_dir={out_dir} ({error})")
    pictures = picture_names(paths)
    claim_outputs(out_dir, pictures, paths + videos, videos)
    params, config, metadata = load_model()
    names = class_names(config.num_classes, metadata.get("class_names"))
    category_ids = metadata.get("category_ids")
    options = detect_options(config)

    import jax

    import ssd_jax
    from ssd_jax import visualize

    failed_videos = 0
    for source in videos:
        try:
            failed_videos += not detect_video(source, out_dir, params, config, options, names, category_ids)
        except KeyboardInterrupt:
            print(f"interrupted: the frames of {source} done so far are in {out_dir}", file=sys.stderr)
            sys.exit(130)
        except OSError as error:
            fail(f"cannot write to {out_dir} ({error}); the frames done so far are kept")
    if not paths:
        if failed_videos:
            sys.exit(1)
        return
    json_path = os.path.join(out_dir, "detections.json")
    batch_size = min(BATCH_SIZE.value, len(paths))
    # Fills the last batch: the compiled program keeps one shape.
    padding = np.zeros((config.image_size, config.image_size, 3), np.uint8)
    results, done = [], 0
    files.write_atomically(json_path, b"[]")  # not a previous run's detections, should this one stop early
    for start in range(0, len(paths), batch_size):
        batch = read_batch(paths[start:start + batch_size], start)
        if not batch:
            continue
        images = [image for _, _, image in batch]
        detections = ssd_jax.detect(params, images + [padding] * (batch_size - len(images)), config=config,
                                    **options)
        detections = jax.device_get(detections)  # numpy: indexing it per image compiles nothing
        for index, (image_id, path, image) in enumerate(batch):
            boxes, scores, classes = visualize.image_detections(detections, index, SCORE.value)
            out_path = os.path.join(out_dir, pictures[image_id])
            try:
                files.write_png(out_path, visualize.draw_boxes(image, boxes, classes, scores, names))
                results += coco_results(image_id, path, pictures[image_id], boxes, scores, classes, *image.shape[:2],
                                        names=names, category_ids=category_ids)
                files.write_atomically(json_path, json.dumps(results, indent=1))
            except OSError as error:
                fail(f"cannot write to {out_dir} ({error}); stopped after {done} image(s), whose pictures and "
                     f"detections ({json_path}) are complete")
            done += 1
            print(f"{path}: {len(scores)} detections >= {SCORE.value} -> {out_path}")
    failures = len(paths) - done
    print(f"wrote {len(results)} detections of {done} images to {json_path}"
          + (f"; {failures} file(s) skipped" if failures else ""))
    if not done or failed_videos:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
