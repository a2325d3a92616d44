r"""int8 against float32 artifacts of one trained model: mAP, file size and CPU latency, side by side.

  python benchmarks/bench_int8.py --checkpoint=runs/shapes/params --dataset=shapes \
      --calibration_images=data/calib/JPEGImages
  python benchmarks/bench_int8.py --checkpoint=W/params --dataset=vocdir --data_dir=DIR \
      --calibration_images=DIR/JPEGImages
  python benchmarks/bench_int8.py --model=ssdlite320_mobilenet_v3_large --calibration_images=DIR  # random weights

Exports the float32 and the int8 ONNX and TFLite artifacts (experiments/export.py's functions,
--batch images each), evaluates each on the data set's evaluation split exactly as
``experiments/evaluate.py --artifact`` does (VOC07 and all-point mAP), and times one batch per
call in ONNX Runtime (its default threads) and the TFLite interpreter (LiteRT, XNNPACK, its
default threads), float and int8 alternated --rounds times (medians). With --model (random
weights, no data set) it reports the int8 detections against the float ones instead of mAP.
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import benchlib
import jax
import numpy as np
from absl import app, flags, logging

from ssd_jax import artifacts, checkpoint, configs, export, quantize
from ssd_jax.data import sources

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A trained checkpoint (WORKDIR/params).")
MODEL = flags.DEFINE_string("model", None, "Or a preset with random weights (no mAP: detections against float).")
DATASET = flags.DEFINE_string("dataset", "shapes", "With --checkpoint: the data set of evaluate.py.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "Its data_dir (vocdir: the folder).")
CALIBRATION = flags.DEFINE_string("calibration_images", None, "Folder or glob of calibration images.")
CALIBRATION_COUNT = flags.DEFINE_integer("calibration_count", 200, "Calibration images used.")
BATCH = flags.DEFINE_integer("batch", 8, "The artifacts' fixed batch.")
FORMATS = flags.DEFINE_list("formats", ["onnx", "tflite"], "Artifact formats.")
ROUNDS = flags.DEFINE_integer("rounds", 5, "Timing alternations (medians reported).")
CALLS = flags.DEFINE_integer("calls", 5, "Calls per timing.")
MIN_SCORE = flags.DEFINE_float("min_score", 0.3, "Float detections from this score on are looked for in int8's "
                                "(random weights score low: 0.02 or so).")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_int8.json", "JSON to write.")


def load_model():
    if CHECKPOINT.value:
        params, config = checkpoint.load_params(CHECKPOINT.value)
        return params, config, checkpoint.load_metadata(CHECKPOINT.value).get("class_names")
    import ssd_jax

    config = configs.get(MODEL.value)
    return jax.tree.map(np.asarray, ssd_jax.init(jax.random.key(0), config)), config, None


def evaluate(artifact, source) -> dict:
    from ssd_jax.evaluation import datasets

    metrics, *_ = datasets.evaluate_split(artifact, artifact.config, source, batch_size=artifact.batch,
                                          image_size=artifact.image_size)
    return metrics


def seconds_per_batch(artifact, images) -> float:
    artifact(images)  # warm-up
    start = time.perf_counter()
    for _ in range(CALLS.value):
        artifact(images)
    return (time.perf_counter() - start) / CALLS.value


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if bool(CHECKPOINT.value) == bool(MODEL.value) or not CALIBRATION.value:
        sys.exit("error: give --checkpoint or --model, and --calibration_images")
    params, config, class_names = load_model()
    calibration, _ = quantize.calibration_images(CALIBRATION.value, config.image_size, CALIBRATION_COUNT.value)
    source = None
    if CHECKPOINT.value:
        source = sources.open_source(DATASET.value, data_dir=DATA_DIR.value,
                                     class_names=class_names if sources.get(DATASET.value).classes_from_data else ())
    images = quantize.fixed_batches(calibration, BATCH.value)[0]
    rows, directory = [], tempfile.mkdtemp(prefix="bench_int8_")
    for fmt in FORMATS.value:
        loaded = {}
        for dtype in ("float32", "int8"):
            path = os.path.join(directory, f"{dtype}.{fmt}")
            start = time.perf_counter()
            export.export(params, config, path, format=fmt, batch=BATCH.value, class_names=class_names,
                          quantize="int8" if dtype == "int8" else None,
                          calibration_images=calibration if dtype == "int8" else None)
            print(f"{fmt} {dtype}: exported in {time.perf_counter() - start:.0f} s, {os.path.getsize(path)} bytes")
            loaded[dtype] = artifacts.load(path)
        times = {"float32": [], "int8": []}
        for _ in range(ROUNDS.value):
            for dtype in times:
                times[dtype].append(seconds_per_batch(loaded[dtype], images))
        comparison = quantize.compare_detections(loaded["float32"](images), loaded["int8"](images),
                                                 min_score=MIN_SCORE.value)
        for dtype, artifact in loaded.items():
            row = {"format": fmt, "dtype": dtype, "size_mb": os.path.getsize(artifact.path) / 2**20,
                   "ms_per_image": 1e3 * statistics.median(times[dtype]) / BATCH.value}
            if source is not None:
                metrics = evaluate(artifact, source)
                row.update(voc07_mAP=metrics["voc07_mAP"], voc_mAP=metrics["voc_mAP"])
            rows.append(row)
        float_row, int8_row = rows[-2], rows[-1]
        int8_row.update(size_ratio=int8_row["size_mb"] / float_row["size_mb"],
                        speedup=float_row["ms_per_image"] / int8_row["ms_per_image"],
                        found=comparison["found"], mean_iou=comparison["mean_iou"],
                        compared=comparison["detections"])
        if source is not None:
            int8_row["mAP_change"] = int8_row["voc07_mAP"] - float_row["voc07_mAP"]
        print(f"{fmt}: int8 against float32 on {len(images)} calibration images: "
              f"{quantize.describe_comparison(comparison, MIN_SCORE.value)}")
    columns = [("format", "format"), ("dtype", "dtype"), ("size_mb", "MiB"), ("size_ratio", "size vs float"),
               ("ms_per_image", "ms / image"), ("speedup", "int8 speed-up")]
    if source is not None:
        columns += [("voc07_mAP", "VOC07 mAP"), ("voc_mAP", "all-point mAP"), ("mAP_change", "VOC07 change")]
    columns += [("compared", f"float detections >= {MIN_SCORE.value}"), ("found", "found in int8"),
                ("mean_iou", "their mean IoU")]
    what = CHECKPOINT.value or f"{MODEL.value} (random weights)"
    print(f"\n{config.name} from {what}, batch {BATCH.value}, {len(calibration)} calibration images; "
          f"{benchlib.machine()}\n")
    print(benchlib.markdown_table(rows, columns))
    import onnxruntime
    import tensorflow as tf

    benchlib.write_json(OUT.value, {"model": config.name, "source": what, "dataset": DATASET.value if source else None,
                                    "batch": BATCH.value, "calibration_images": len(calibration),
                                    "machine": benchlib.machine(), "rows": rows,
                                    "versions": {**benchlib.versions(), "onnxruntime": onnxruntime.__version__,
                                                 "tensorflow": tf.__version__}})


if __name__ == "__main__":
    app.run(main)
