"""Parity with torchvision's ssd300_vgg16: the same random weights give the same outputs.

Skipped when torch/torchvision are not installed (pip install -e '.[torch]').
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssd_jax
from ssd_jax import boxes as box_lib
from ssd_jax import weights
from ssd_jax.models import SSD

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


def patterned_images(batch=2, height=300, width=300, seed=0):
    """Smooth colour patterns plus noise, so that the random network sees structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = [np.stack([np.sin(xx * 7 + i) * 120 + 128, np.cos(yy * 5 + i) * 100 + 128, xx * yy * 255], -1)
           + rng.normal(0, 10, (height, width, 3)) for i in range(batch)]
    return np.clip(out, 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None).eval()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    return model, weights.from_torchvision(state), weights.torchvision_config(state)


def torch_images(images):
    return list(torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0)


def relative_error(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return np.abs(ours - theirs).max() / np.abs(theirs).max()


def torchvision_anchors(model, size: int) -> np.ndarray:
    """A torchvision SSD's default boxes for a size x size input: [P, 4] xyxy pixels."""
    with torch.no_grad():
        image_list, _ = model.transform(torch_images(patterned_images(1, size, size)))
        features = list(model.backbone(image_list.tensors).values())
        return model.anchor_generator(image_list, features)[0].numpy()


def torchvision_head_outputs(model, images) -> tuple[np.ndarray, np.ndarray]:
    """A torchvision SSD's head outputs for uint8-range images [B, H, W, 3]: (offsets [B, P, 4],
    class logits [B, P, C])."""
    with torch.no_grad():
        image_list, _ = model.transform(torch_images(images))
        head = model.head(list(model.backbone(image_list.tensors).values()))
    return head["bbox_regression"].numpy(), head["cls_logits"].numpy()


def test_priors_equal_torchvision_default_boxes(models):
    model, _, config = models
    ours = np.asarray(box_lib.centers_to_corners(ssd_jax.priors(config))) * 300
    np.testing.assert_allclose(ours, torchvision_anchors(model, 300), atol=1e-4)


def test_head_outputs_equal_torchvision(models):
    model, params, config = models
    images = patterned_images(2)
    their_loc, their_logits = torchvision_head_outputs(model, images)
    loc, logits = jax.jit(SSD(config).apply)({"params": params}, images)
    loc_error = relative_error(loc, their_loc)
    logit_error = relative_error(logits, their_logits)
    print(f"\nhead outputs, relative error vs torchvision (float32): locations {loc_error:.2e}, "
          f"logits {logit_error:.2e}")
    assert loc_error < 1e-4 and logit_error < 1e-4


def found_fraction(ours, theirs, height, width):
    """Fraction of torchvision detections with a twin in ours: same class, |score diff| < 1e-3, IoU > 0.99
    (or corners within 0.05 pixels)."""
    found, total = 0, 0
    for b, target in enumerate(theirs):
        n = int(ours.num_detections[b])
        our_boxes = np.asarray(ours.boxes[b, :n]) * np.array([width, height, width, height])
        their_boxes = target["boxes"].numpy()
        iou = np.asarray(box_lib.pairwise_iou(their_boxes, our_boxes))
        # Boxes clipped to zero width at the border have no IoU: compare their coordinates.
        same_corners = np.abs(their_boxes[:, None] - our_boxes[None]).max(-1) < 0.05
        same_class = target["labels"].numpy()[:, None] == np.asarray(ours.classes[b, :n])[None]
        close_score = np.abs(target["scores"].numpy()[:, None] - np.asarray(ours.scores[b, :n])[None]) < 1e-3
        found += int(np.sum(np.any(((iou > 0.99) | same_corners) & same_class & close_score, axis=1)))
        total += len(target["boxes"])
    return found / total, total


@pytest.mark.parametrize("height, width", [(300, 300), (240, 360)])
def test_detections_equal_torchvision(models, height, width):
    model, params, config = models
    images = patterned_images(2, height, width)
    with torch.no_grad():
        theirs = model(torch_images(images))
    ours = ssd_jax.detect(params, images, config=config)
    fraction, total = found_fraction(ours, theirs, height, width)
    print(f"\n{height}x{width}: {fraction:.2%} of torchvision's {total} detections found in ours")
    assert total > 100 and fraction >= 0.99


def test_bfloat16_head_outputs_are_close(models):
    _, params, config = models
    images = patterned_images(2)
    loc32, logits32 = jax.jit(SSD(config).apply)({"params": params}, images)
    loc16, logits16 = jax.jit(SSD(config, dtype=jnp.bfloat16).apply)({"params": params}, images)
    loc_error, logit_error = relative_error(loc16, loc32), relative_error(logits16, logits32)
    print(f"\nbfloat16 vs float32 head outputs, relative error: locations {loc_error:.2e}, logits {logit_error:.2e}")
    assert loc_error < 0.05 and logit_error < 0.05


def test_pth_is_read_without_executing_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported"):
        weights.load_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_pth_round_trip(tmp_path, models):
    model, params, _ = models
    path = tmp_path / "ssd300.pth"
    torch.save({"state_dict": model.state_dict()}, path)  # nested, as training scripts save it
    loaded = weights.from_torchvision(weights.load_state_dict(path))
    np.testing.assert_array_equal(loaded["conf_3"]["kernel"], params["conf_3"]["kernel"])


@pytest.mark.parametrize("scenario", ["dense", "sparse"])
def test_batched_nms_keeps_what_torchvision_keeps(scenario):
    """SSD's post-processing as torchvision's SSD runs it (per class: threshold, top-k, then
    ``torchvision.ops.batched_nms``) against ``ssd_jax.nms.batched_nms``, on SSD300's priors."""
    rng = np.random.default_rng(21)
    prior_boxes = ssd_jax.priors(ssd_jax.configs.ssd300())
    boxes = np.clip(np.asarray(box_lib.decode(rng.normal(0, 1, (2, *prior_boxes.shape)), prior_boxes)), 0, 1)
    boxes = boxes.astype(np.float32)
    logits = rng.normal(0, 1, (2, len(prior_boxes), 21))
    if scenario == "sparse":
        logits[..., 0] += 9.0
    scores = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    scores = scores.astype(np.float32)
    ours = ssd_jax.nms.batched_nms(boxes, scores, score_threshold=0.01, iou_threshold=0.45, pre_nms_top_k=400,
                                   max_detections=200)
    for b in range(2):
        image_boxes, image_scores = torch.from_numpy(boxes[b]), torch.from_numpy(scores[b])
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label in range(1, 21):
            above = image_scores[:, label] > 0.01
            class_scores, order = image_scores[above, label].topk(min(400, int(above.sum())))
            kept_boxes.append(image_boxes[above][order])
            kept_scores.append(class_scores)
            kept_labels.append(torch.full_like(order, label))
        all_boxes, all_scores, all_labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
        keep = torchvision.ops.batched_nms(all_boxes, all_scores, all_labels, 0.45)[:200]
        n = int(ours.num_detections[b])
        assert n == len(keep)
        np.testing.assert_array_equal(np.asarray(ours.classes[b, :n]), all_labels[keep].numpy())
        np.testing.assert_array_equal(np.asarray(ours.scores[b, :n]), all_scores[keep].numpy())
        np.testing.assert_array_equal(np.asarray(ours.boxes[b, :n]), all_boxes[keep].numpy())
