"""Images/s of the exported detector in its runtimes against ``ssd_jax.detect``, side by side.

  python benchmarks/bench_export.py                  # SSD300 (21 classes), batch 8, CPU
  python benchmarks/bench_export.py --model=ssd_tiny --batch=32

Random weights, the same uint8 images of the model's input size for every runtime: detect
(JAX), the TF SavedModel (any batch: it runs its program once per image) and the ONNX model
(exported for this batch, ONNX Runtime). Calls alternate between the runtimes, one warm-up each;
the median is reported. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import benchlib
import jax
import numpy as np
from absl import app, flags, logging

import ssd_jax
from ssd_jax import configs, export

MODEL = flags.DEFINE_string("model", "ssd300", "Model preset.")
BATCH = flags.DEFINE_integer("batch", 8, "Images per call.")
REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per runtime.")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_export.json", "JSON to write.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import onnxruntime as ort
    import tensorflow as tf

    config = configs.get(MODEL.value)
    params = jax.tree.map(np.asarray, ssd_jax.init(jax.random.key(0), config))
    size = config.image_size
    images = np.random.default_rng(0).integers(0, 256, (BATCH.value, size, size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        saved = tf.saved_model.load(export.export(params, config, os.path.join(directory, "sm"),
                                                  format="savedmodel")).signatures["serving_default"]
        savedmodel_export_s = time.perf_counter() - start
        start = time.perf_counter()
        session = ort.InferenceSession(export.export(params, config, os.path.join(directory, "m.onnx"),
                                                     format="onnx", batch=BATCH.value))
        onnx_export_s = time.perf_counter() - start
        runtimes = {
            "ssd_jax.detect (JAX)": lambda: jax.block_until_ready(ssd_jax.detect(params, images, config=config)),
            "SavedModel (TensorFlow)": lambda: saved(images=tf.constant(images))["boxes"].numpy(),
            "ONNX (ONNX Runtime)": lambda: session.run(None, {"images": images}),
        }
        times = {name: [] for name in runtimes}
        for run in runtimes.values():
            run()  # warm-up (compiles)
        for _ in range(REPEATS.value):
            for name, run in runtimes.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    rows = [{"runtime": name, "batch": BATCH.value, "ms": statistics.median(t) * 1e3,
             "images_per_s": BATCH.value / statistics.median(t)} for name, t in times.items()]
    for row in rows:
        row["vs_detect"] = row["images_per_s"] / rows[0]["images_per_s"]
    print(f"\n{MODEL.value} export, {benchlib.machine()}, jax {jax.__version__}, tensorflow {tf.__version__}, "
          f"onnxruntime {ort.__version__}; export took {savedmodel_export_s:.0f} s (SavedModel) and "
          f"{onnx_export_s:.0f} s (ONNX)\n")
    print(benchlib.markdown_table(rows, [("runtime", "runtime"), ("batch", "batch"), ("ms", "ms per call"),
                                         ("images_per_s", "images/s"), ("vs_detect", "vs detect")]))
    benchlib.write_json(OUT.value, {"benchmark": "export", "model": MODEL.value, "rows": rows,
                                    "export_s": {"savedmodel": savedmodel_export_s, "onnx": onnx_export_s}})


if __name__ == "__main__":
    app.run(main)
