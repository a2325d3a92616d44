"""experiments/detect.py on a video against ``ssd_jax.detect`` on the same frames in memory.

  python benchmarks/bench_video.py                       # SSD300 (random weights), 640x360, batch 8
  python benchmarks/bench_video.py --model=ssd_tiny --frames=256

Generates a video of moving shapes, then alternates (--rounds times): detect.py on the video
(decoding, resizing, drawing, encoding and the JSONL, in its own process; its own pace after the
first batch, which carries the compilation) and ``detect`` on the decoded frames already in memory,
batch by batch (after a warm-up call). The ratio says how much of the host's work is hidden behind
the device's: 1.0 is all of it. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib
import jax
import numpy as np
from absl import app, flags, logging

import ssd_jax
from ssd_jax import checkpoint, configs, video

MODEL = flags.DEFINE_string("model", "ssd300", "Model preset (random weights).")
FRAMES = flags.DEFINE_integer("frames", 64, "Frames in the generated video.")
WIDTH = flags.DEFINE_integer("width", 640, "Frame width.")
HEIGHT = flags.DEFINE_integer("height", 360, "Frame height.")
BATCH = flags.DEFINE_integer("batch", 8, "Frames per detect call, on both sides.")
ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternations of the two sides (medians reported).")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_video.json", "JSON to write.")
DETECT_PY = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "detect.py")


def moving_shapes(index: int, height: int, width: int) -> np.ndarray:
    """A frame of a dark gradient with a few bright shapes moving across it."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 2] = np.linspace(20, 120, width, dtype=np.uint8)[None, :]
    for k, color in enumerate(((230, 60, 40), (40, 220, 90), (240, 230, 40))):
        x = (37 * k + 5 * index) % (width - 60)
        y = (height // 4) * (k + 1) - 25
        frame[y:y + 50, x:x + 60] = color
    return frame


def in_memory_rate(params, config, frames: np.ndarray, batch: int) -> float:
    """Frames/s of ``detect`` on batches of in-memory frames, after one warm-up call."""
    batches = [frames[i:i + batch] for i in range(0, len(frames) - batch + 1, batch)]
    jax.block_until_ready(ssd_jax.detect(params, batches[0], config=config))
    start = time.perf_counter()
    for images in batches:
        jax.block_until_ready(ssd_jax.detect(params, images, config=config))
    return len(batches) * batch / (time.perf_counter() - start)


def detect_py_rate(checkpoint_dir: str, clip: str, out_dir: str, batch: int) -> float:
    """Frames/s that detect.py reports for its run on ``clip`` (after its first batch)."""
    out = subprocess.run([sys.executable, DETECT_PY, f"--checkpoint={checkpoint_dir}", f"--out_dir={out_dir}",
                          f"--batch_size={batch}", "--overwrite", "--min_score=0.3", clip],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    found = re.search(r"([0-9.]+) frames/s after the first batch", out.stdout)
    if not found:
        raise RuntimeError(f"detect.py printed no rate: {out.stdout[-1000:]}")
    return float(found.group(1))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = configs.get(MODEL.value)
    params = jax.tree.map(np.asarray, ssd_jax.init(jax.random.key(0), config))
    work = tempfile.mkdtemp(prefix="bench_video_")
    ckpt = checkpoint.save_params(os.path.join(work, "ckpt"), params, config)
    clip = os.path.join(work, "clip.mp4")
    writer = video.VideoWriter(clip, fps=25.0, width=WIDTH.value, height=HEIGHT.value)
    for i in range(FRAMES.value):
        writer.write(moving_shapes(i, HEIGHT.value, WIDTH.value))
    writer.close()
    reader = video.open_video(clip)
    frames = np.stack([frame.pixels for frame in reader.frames()])  # decoded independently of detect.py
    reader.close()

    pipeline, memory = [], []
    for _ in range(ROUNDS.value):
        pipeline.append(detect_py_rate(ckpt, clip, os.path.join(work, "out"), BATCH.value))
        memory.append(in_memory_rate(params, config, frames, BATCH.value))
        print(f"detect.py {pipeline[-1]:.2f} frames/s, detect in memory {memory[-1]:.2f} frames/s", flush=True)
    row = {"model": MODEL.value, "frames": FRAMES.value, "size": f"{WIDTH.value}x{HEIGHT.value}", "batch": BATCH.value,
           "detect_py_fps": statistics.median(pipeline), "in_memory_fps": statistics.median(memory)}
    row["ratio"] = row["detect_py_fps"] / row["in_memory_fps"]
    print(benchlib.markdown_table([row], [("model", "model"), ("frames", "frames"), ("size", "frame size"),
                                          ("batch", "batch"), ("detect_py_fps", "detect.py frames/s"),
                                          ("in_memory_fps", "detect in memory frames/s"), ("ratio", "ratio")]))
    benchlib.write_json(OUT.value, {"machine": benchlib.machine(), "versions": benchlib.versions(), "rows": [row],
                                    "rounds": {"detect_py": pipeline, "in_memory": memory}})


if __name__ == "__main__":
    app.run(main)
