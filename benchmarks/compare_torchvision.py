"""ssd_jax against torchvision's SSDs, side by side: the same weights, images and batch.

  python benchmarks/compare_torchvision.py                 # needs torch + torchvision (pip install -e '.[torch]')
  python benchmarks/compare_torchvision.py --batch=8 --train_batch=4 --repeats=5
  python benchmarks/compare_torchvision.py --model=ssdlite320_mobilenet_v3_large

torchvision's model (``--model``: ssd300_vgg16 or ssdlite320_mobilenet_v3_large) is randomly
initialised and converted with ``ssd_jax.weights.from_torchvision`` into ``ssd300_torchvision``
or ``ssdlite320_mobilenet_v3_large`` (91 classes), so both compute the same function. Inference:
uint8 images [B, S, S, 3] -> ``ssd_jax.detect`` (with torchvision's post-processing options)
against ``model(images)`` in eval mode (both
normalise, run the network, decode and NMS); the network alone (backbone and heads) is timed
too, since random weights give NMS its worst case. float32 keeps each framework's default (on a
GPU both round convolution inputs to TF32) unless --strict_float32; bfloat16 is ``dtype=`` on
our side and ``torch.autocast`` on torchvision's.
Training: one SGD step (momentum 0.9, weight decay 5e-4) on the same images and boxes,
matching and hard negative mining included on both sides; SSDLite's BatchNorms in training
mode on both sides.
Calls alternate (ours, theirs, ours, ...) after a warm-up, and the median of each side is
reported; the ratio is ssd_jax's images/s over torchvision's (above 1: ssd_jax is faster).
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import contextlib
import time

try:  # torch must be imported before TensorFlow or JAX pulls it in (see the README's known limits)
    import torch
    import torchvision
except ImportError:  # reported in main()
    torch = torchvision = None

import benchlib
import jax
import numpy as np
from absl import app, flags, logging

import ssd_jax
from ssd_jax import train, weights
from ssd_jax.models import SSD, init_batch_norm

MODEL = flags.DEFINE_enum("model", "ssd300_vgg16", ["ssd300_vgg16", "ssdlite320_mobilenet_v3_large"],
                          "torchvision's detection model to compare with.")
BATCH = flags.DEFINE_integer("batch", 8, "Images per inference call.")
TRAIN_BATCH = flags.DEFINE_integer("train_batch", 8, "Images per training step (0: skip training).")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                          "Compute dtype of both sides: ssd_jax's dtype argument, torch.autocast for torchvision.")
STRICT_FLOAT32 = flags.DEFINE_bool(
    "strict_float32", False, "Time float32 without TF32 on a GPU (both sides). By default each side keeps its "
    "framework's default, which on a GPU is TF32 convolutions for both; the detections are compared in strict "
    "float32 either way.")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls of each side (median reported).")
OUT = flags.DEFINE_string("out", "benchmarks/results/compare_torchvision.json", "JSON to write.")


# torchvision's post-processing options of each model (its defaults), passed to detect.
DETECT_OPTIONS = {"ssd300_vgg16": {},
                  "ssdlite320_mobilenet_v3_large": {"score_threshold": 0.001, "iou_threshold": 0.55,
                                                    "pre_nms_top_k": 300, "max_detections": 300}}


def sample_batch(batch: int, size: int = 300, max_boxes: int = 8, seed: int = 0) -> dict:
    """Smooth colour patterns with noise (uint8 [B, size, size, 3]) and 1..max_boxes boxes per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    images = np.stack([np.stack([np.sin(xx * 7 + i) * 120 + 128, np.cos(yy * 5 + i) * 100 + 128, xx * yy * 255], -1)
                       + rng.normal(0, 10, (size, size, 3)) for i in range(batch)])
    lo = rng.uniform(0, 0.6, (batch, max_boxes, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, (batch, max_boxes, 2))], -1).clip(0, 1)
    mask = np.arange(max_boxes)[None] < rng.integers(1, max_boxes + 1, (batch, 1))
    return {"image": np.clip(images, 0, 255).astype(np.uint8), "boxes": (boxes * mask[..., None]).astype(np.float32),
            "labels": np.where(mask, rng.integers(1, 91, mask.shape), 0).astype(np.int32), "mask": mask}


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def strict_float32():
    """Float32 arithmetic on both sides: on a GPU, no TF32 in convolutions and matmuls."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def autocast(device: str):
    """torch's mixed precision for --dtype=bfloat16 (parameters stay float32, as on our side)."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=DTYPE.value == "bfloat16")


def torch_images(images, device: str) -> list:
    return list((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0).to(device))


def alternate(ours, theirs, repeats: int) -> tuple[float, float]:
    """Median seconds of ``ours()`` and ``theirs()``, called alternately after one warm-up each."""
    ours(), theirs()
    ours_times, their_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs()
        their_times.append(time.perf_counter() - start)
    return float(np.median(ours_times)), float(np.median(their_times))


def compare_network(model, params, config, batch: dict, device: str) -> dict:
    """The network alone (pixels -> box offsets and class logits): no resizing, decoding or NMS."""
    model.eval()
    mean = torch.tensor(model.transform.image_mean, device=device)[:, None, None]
    std = torch.tensor(model.transform.image_std, device=device)[:, None, None]
    their_images = (torch.stack(torch_images(batch["image"], device)) - mean) / std
    network = jax.jit(lambda p, x: SSD(config, dtype=DTYPE.value).apply({"params": p}, x))
    images = jax.device_put(batch["image"])

    def theirs():
        with torch.inference_mode(), autocast(device):
            outputs = model.head(list(model.backbone(their_images).values()))
        synchronize()
        return outputs

    def ours():
        return jax.block_until_ready(network(params, images))

    ours_s, theirs_s = alternate(ours, theirs, REPEATS.value)
    return row("network only", len(images), ours_s, theirs_s)


def compare_inference(model, params, config, batch: dict, device: str) -> dict:
    images = jax.device_put(batch["image"])
    their_images = torch_images(batch["image"], device)
    model.eval()

    def theirs():
        with torch.inference_mode(), autocast(device):
            detections = model(their_images)
        synchronize()
        return detections

    def ours():
        return jax.block_until_ready(ssd_jax.detect(params, images, config=config, dtype=DTYPE.value,
                                                    **DETECT_OPTIONS[MODEL.value]))

    if DTYPE.value == "float32":  # bfloat16 rounding reorders near-equal scores on both sides
        with strict_float32():  # TF32 rounding could too
            check_same_detections(ours(), theirs())  # the timings compare the same computation
    ours_s, theirs_s = alternate(ours, theirs, REPEATS.value)
    return row("inference (detect)", len(images), ours_s, theirs_s)


def check_same_detections(ours, theirs) -> None:
    """Both sides keep the same number of detections per image with the same best scores."""
    for b, target in enumerate(theirs):
        their_scores = target["scores"].cpu().numpy()
        our_scores = np.asarray(ours.scores[b, :int(ours.num_detections[b])])
        if len(our_scores) != len(their_scores) or np.abs(our_scores - their_scores).max(initial=0) > 1e-3:
            raise SystemExit(f"error: image {b}: ssd_jax keeps {len(our_scores)} detections, torchvision "
                             f"{len(their_scores)}; the two models do not compute the same function")


def compare_train_step(model, params, config, batch: dict, device: str) -> dict:
    size = len(batch["image"])
    # torchvision's side: the step of its reference detection training script.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    their_images = torch_images(batch["image"], device)
    targets = [{"boxes": torch.from_numpy(b[m] * float(config.image_size)).to(device),
                "labels": torch.from_numpy(lab[m].astype(np.int64)).to(device)}
               for b, lab, m in zip(batch["boxes"], batch["labels"], batch["mask"])]

    def theirs():
        with autocast(device):
            losses = model(their_images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        synchronize()

    # ssd_jax's side: train_step with the paper's SGD recipe, on one device.
    recipe = train.default_config()
    optimizer_fn, schedule = train.make_optimizer(recipe), train.learning_rate_schedule(recipe)
    mesh = train.data_mesh(jax.devices()[:1])
    step = train.jit_train_step(config, optimizer_fn, schedule, mesh, jax.numpy.dtype(DTYPE.value))
    # With BatchNorms (SSDLite) both sides normalise with the batch's statistics.
    batch_stats = None
    if config.head == "lite":
        params, batch_stats = init_batch_norm(params, config)
    state = train.replicate(train.create_train_state(params, optimizer_fn, batch_stats), mesh)
    device_batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))

    def ours():
        nonlocal state
        state, metrics = step(state, device_batch)
        jax.block_until_ready(metrics)

    ours_s, theirs_s = alternate(ours, theirs, REPEATS.value)
    return row("training step", size, ours_s, theirs_s)


def row(what: str, batch: int, ours_s: float, theirs_s: float) -> dict:
    return {"what": what, "batch": batch, "ours_ms": ours_s * 1e3, "torchvision_ms": theirs_s * 1e3,
            "ours_images_per_s": batch / ours_s, "torchvision_images_per_s": batch / theirs_s,
            "ratio": theirs_s / ours_s}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if torch is None:
        raise SystemExit("error: compare_torchvision.py needs torch + torchvision: pip install -e '.[torch]'")
    torch.manual_seed(0)
    device = benchlib.torch_device()
    model = getattr(torchvision.models.detection, MODEL.value)(weights=None, weights_backbone=None)
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    params, config = jax.device_put(weights.from_torchvision(state_dict)), weights.torchvision_config(state_dict)
    model.to(device)
    with strict_float32() if STRICT_FLOAT32.value else contextlib.nullcontext():
        size = config.image_size
        rows = [compare_inference(model, params, config, sample_batch(BATCH.value, size), device),
                compare_network(model, params, config, sample_batch(BATCH.value, size), device)]
        if TRAIN_BATCH.value:
            rows.append(compare_train_step(model, params, config, sample_batch(TRAIN_BATCH.value, size), device))
    their_device = benchlib.torch_device_name()
    precision = DTYPE.value + (" (strict)" if STRICT_FLOAT32.value and DTYPE.value == "float32" else "")
    print(f"\n{MODEL.value}, {precision}. ssd_jax: {benchlib.machine()}, jax {jax.__version__}. torchvision: "
          f"{their_device}, torch {torch.__version__}, torchvision {torchvision.__version__}\n")
    print(benchlib.markdown_table(rows, [
        ("what", "what"), ("batch", "batch"), ("ours_ms", "ssd_jax ms"), ("torchvision_ms", "torchvision ms"),
        ("ours_images_per_s", "ssd_jax images/s"), ("torchvision_images_per_s", "torchvision images/s"),
        ("ratio", "ratio ssd_jax / torchvision")]))
    benchlib.write_json(OUT.value, {"benchmark": "compare_torchvision", "model": MODEL.value,
                                    "torch": torch.__version__,
                                    "torch_device": their_device, "dtype": DTYPE.value,
                                    "strict_float32": STRICT_FLOAT32.value,
                                    "torchvision": torchvision.__version__, "rows": rows})


if __name__ == "__main__":
    app.run(main)
