"""Our fixed-size batched NMS against torchvision's on identical inputs: the kept sets and the time.

  python benchmarks/bench_nms.py                  # needs torch + torchvision (pip install -e '.[torch]')
  python benchmarks/bench_nms.py --batch=32 --classes=21,91

Both sides do SSD's post-processing of the same boxes and class probabilities: per class, scores
above 0.01, the best 400, NMS at IoU 0.45, then the best 200 of all classes per image.
torchvision's side is the procedure of its SSD (``SSD.postprocess_detections``): a loop over
images and classes, then ``torchvision.ops.batched_nms``; ours is ``ssd_jax.nms.batched_nms``,
one jitted program for the batch. Three inputs: 'dense' (random class scores: almost everything
passes the threshold, thousands of candidates per class), 'sparse' (background dominates: about
10 candidates per class) and 'objects' (a few objects per image, each with many confident
overlapping boxes of its class, weak scores elsewhere: what a trained model gives). The
"stage" column says which stage of ``batched_nms`` the batch needed (shallow, deep or
exhaustive; see ``ssd_jax/nms.py``). Calls alternate (ours, theirs, ours, ...) and the median
of each is reported. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import time

try:  # torch must be imported before TensorFlow or JAX pulls it in (see the README's known limits)
    import torch
    import torchvision
except ImportError:  # reported in main()
    torch = torchvision = None

import benchlib
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from ssd_jax import boxes as box_lib
from ssd_jax import configs, nms, priors

BATCH = flags.DEFINE_integer("batch", 8, "Images per call.")
CLASSES = flags.DEFINE_list("classes", ["21"], "Class counts (background included), e.g. 21 (VOC) and 91 (COCO).")
SCENARIOS = flags.DEFINE_list("scenarios", ["dense", "sparse", "objects"], "Inputs.")
REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls of each side (median reported).")
OUT = flags.DEFINE_string("out", "benchmarks/results/bench_nms.json", "JSON to write.")

SCORE_THRESHOLD, IOU_THRESHOLD, TOP_K, MAX_DETECTIONS = 0.01, 0.45, 400, 200


def make_inputs(scenario: str, batch: int, num_classes: int = 21, seed: int = 0):
    """SSD300-like candidates: default boxes jittered -> boxes [B, P, 4], probabilities [B, P, C]."""
    rng = np.random.default_rng(seed)
    prior_boxes = priors(configs.ssd300())
    offsets = rng.normal(0, 1, (batch, *prior_boxes.shape)).astype(np.float32)
    boxes = np.clip(np.asarray(box_lib.decode(offsets, prior_boxes, (0.1, 0.2))), 0, 1)
    logits = rng.normal(0, 1, (batch, len(prior_boxes), num_classes)).astype(np.float32)
    if scenario == "sparse":
        logits[..., 0] += 9.0  # background wins almost everywhere: ~10 candidates per class
    elif scenario == "objects":  # 4 objects per image: boxes that overlap one score high for its class
        logits[..., 0] += 5.0
        for b in range(batch):
            for _ in range(4):
                center, size = rng.uniform(0.2, 0.8, 2), rng.uniform(0.1, 0.5, 2)
                target = np.concatenate([center - size / 2, center + size / 2])[None]
                overlap = np.asarray(box_lib.pairwise_iou(boxes[b], target))[:, 0]
                logits[b, :, rng.integers(1, num_classes)] += 14.0 * overlap
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    return boxes.astype(np.float32), probabilities.astype(np.float32)


def torchvision_postprocess(boxes, scores):
    """torchvision SSD's post-processing, per image: [(boxes [k, 4], scores [k], labels [k])]."""
    out = []
    for image_boxes, image_scores in zip(boxes, scores):
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label in range(1, image_scores.shape[-1]):
            class_scores = image_scores[:, label]
            above = class_scores > SCORE_THRESHOLD
            class_scores, class_boxes = class_scores[above], image_boxes[above]
            class_scores, order = class_scores.topk(min(TOP_K, class_scores.numel()))
            kept_boxes.append(class_boxes[order])
            kept_scores.append(class_scores)
            kept_labels.append(torch.full_like(order, label))
        all_boxes, all_scores, all_labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
        keep = torchvision.ops.batched_nms(all_boxes, all_scores, all_labels, IOU_THRESHOLD)[:MAX_DETECTIONS]
        out.append((all_boxes[keep], all_scores[keep], all_labels[keep]))
    return out


def same_kept_sets(ours: nms.Detections, theirs) -> tuple[int, int]:
    """(images whose kept (class, score, box) sets are identical, detections compared)."""
    same, total = 0, 0
    for b, (their_boxes, their_scores, their_labels) in enumerate(theirs):
        n = int(ours.num_detections[b])
        mine = sorted(zip(np.asarray(ours.classes[b, :n]).tolist(), np.asarray(ours.scores[b, :n]).tolist(),
                          map(tuple, np.asarray(ours.boxes[b, :n]).tolist())))
        other = sorted(zip(their_labels.tolist(), their_scores.tolist(), map(tuple, their_boxes.tolist())))
        same += mine == other
        total += len(other)
    return same, total


def run_torchvision(boxes, scores):
    detections = torchvision_postprocess(boxes, scores)
    if boxes.is_cuda:
        torch.cuda.synchronize()
    return detections


def measure(scenario: str, num_classes: int) -> dict:
    boxes, scores = make_inputs(scenario, BATCH.value, num_classes)
    ours_fn = jax.jit(lambda b, s: nms.batched_nms(b, s, score_threshold=SCORE_THRESHOLD, iou_threshold=IOU_THRESHOLD,
                                                   pre_nms_top_k=TOP_K, max_detections=MAX_DETECTIONS))
    jax_boxes, jax_scores = jnp.asarray(boxes), jnp.asarray(scores)
    device = benchlib.torch_device()
    torch_boxes, torch_scores = torch.from_numpy(boxes).to(device), torch.from_numpy(scores).to(device)
    ours_fn, compile_s = benchlib.compile_timed(ours_fn, jax_boxes, jax_scores)
    ours = jax.block_until_ready(ours_fn(jax_boxes, jax_scores))
    stage = int(jax.jit(lambda b, s: nms.nms_stages(b, s, score_threshold=SCORE_THRESHOLD, iou_threshold=IOU_THRESHOLD,
                                                    pre_nms_top_k=TOP_K, max_detections=MAX_DETECTIONS)[1])(
        jax_boxes, jax_scores))
    with torch.inference_mode():
        theirs = [tuple(t.cpu() for t in image) for image in run_torchvision(torch_boxes, torch_scores)]
    same, total = same_kept_sets(ours, theirs)

    ours_times, their_times = [], []
    with torch.inference_mode():
        for _ in range(REPEATS.value):
            start = time.perf_counter()
            jax.block_until_ready(ours_fn(jax_boxes, jax_scores))
            ours_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            run_torchvision(torch_boxes, torch_scores)
            their_times.append(time.perf_counter() - start)
    ours_s, theirs_s = float(np.median(ours_times)), float(np.median(their_times))
    return {"scenario": scenario, "classes": num_classes, "stage": ("shallow", "deep", "exhaustive")[stage],
            "batch": BATCH.value, "detections": total,
            "identical_images": f"{same}/{BATCH.value}", "ours_ms": ours_s * 1e3, "torchvision_ms": theirs_s * 1e3,
            "speedup": theirs_s / ours_s, "compile_s": compile_s}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if torch is None:
        raise SystemExit("error: bench_nms.py compares with torchvision: pip install -e '.[torch]'")
    rows = [measure(scenario, int(classes)) for classes in CLASSES.value for scenario in SCENARIOS.value]
    their_device = benchlib.torch_device_name()
    print(f"\nSSD post-processing NMS, {benchlib.machine()}, torch {torch.__version__} "
          f"({their_device}), torchvision {torchvision.__version__}\n")
    print(benchlib.markdown_table(rows, [
        ("scenario", "input"), ("classes", "classes"), ("stage", "stage"), ("batch", "batch"),
        ("detections", "detections kept"),
        ("identical_images", "identical kept sets"), ("ours_ms", "ssd_jax ms"), ("torchvision_ms", "torchvision ms"),
        ("speedup", "torchvision / ssd_jax"), ("compile_s", "compile s")]))
    benchlib.write_json(OUT.value, {"benchmark": "nms", "torch": torch.__version__,
                                    "torchvision": torchvision.__version__, "rows": rows})


if __name__ == "__main__":
    app.run(main)
