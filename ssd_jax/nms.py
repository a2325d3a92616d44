"""Fixed-size, per-class, batched non-maximum suppression."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssd_jax import boxes as box_lib


class Detections(NamedTuple):
    """Padded detections of a batch; entries past ``num_detections`` are zeros (class 0).

    boxes: [B, K, 4] (xmin, ymin, xmax, ymax), normalised.
    scores: [B, K] float32, best first.
    classes: [B, K] int32, 1..C-1.
    num_detections: [B] int32.
    """

    boxes: jax.Array
    scores: jax.Array
    classes: jax.Array
    num_detections: jax.Array


def greedy_nms_mask(boxes, valid, *, iou_threshold: float):
    """Greedy NMS over boxes already sorted best first -> keep mask [..., K].

    Box j is kept iff it is valid and no kept box before it overlaps it with IoU >
    ``iou_threshold``. Instead of K sequential steps this iterates ``keep = valid & ~any(kept
    earlier overlapping box)`` to its fixed point: after t rounds the first t boxes are final,
    and in practice it settles after a handful of rounds (the longest chain of boxes that
    suppress one another), each a vectorised [K, K] reduction.

    Args:
      boxes: [..., K, 4] corner boxes sorted by descending score.
      valid: [..., K] bool, candidates that passed the score threshold.
    """
    k = boxes.shape[-2]
    earlier = jnp.arange(k)[:, None] < jnp.arange(k)[None, :]  # [K, K]: i before j
    suppresses = (box_lib.pairwise_iou(boxes, boxes) > iou_threshold) & earlier  # [..., K, K]

    def step(state):
        keep, _ = state
        suppressed = jnp.any(suppresses & keep[..., :, None], axis=-2)
        new_keep = valid & ~suppressed
        return new_keep, jnp.any(new_keep != keep)

    keep, _ = jax.lax.while_loop(lambda state: state[1], step, (valid, jnp.array(True)))
    return keep


def batched_nms(
    boxes,
    scores,
    *,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    pre_nms_top_k: int = 400,
    max_detections: int = 200,
) -> Detections:
    """SSD's post-processing: per-class NMS, then the best detections across classes.

    For each image and each class c >= 1: keep scores > ``score_threshold``, take the best
    ``pre_nms_top_k``, suppress boxes with IoU > ``iou_threshold`` with a better kept box; then
    keep the best ``max_detections`` of all classes. Shapes are static: the result is padded.

    Args:
      boxes: [B, P, 4] decoded corner boxes, shared by all classes.
      scores: [B, P, C] class probabilities, class 0 = background (ignored).
    Returns:
      ``Detections`` with K = ``max_detections``.
    """
    batch, num_priors, _ = scores.shape
    top_k = min(pre_nms_top_k, num_priors)
    class_scores = jnp.swapaxes(scores[..., 1:], 1, 2).astype(jnp.float32)  # [B, C-1, P]
    class_scores = jnp.where(class_scores > score_threshold, class_scores, -1.0)
    top_scores, top_index = jax.lax.top_k(class_scores, top_k)  # [B, C-1, k], best first
    candidates = jnp.take_along_axis(boxes[:, None, :, :], top_index[..., None], axis=2)  # [B, C-1, k, 4]
    valid = top_scores > score_threshold
    keep = greedy_nms_mask(candidates, valid, iou_threshold=iou_threshold)

    kept_scores = jnp.where(keep, top_scores, -1.0).reshape(batch, -1)  # [B, (C-1) k]
    num_out = min(max_detections, kept_scores.shape[1])
    best_scores, best = jax.lax.top_k(kept_scores, num_out)
    found = best_scores > score_threshold
    out_boxes = jnp.take_along_axis(candidates.reshape(batch, -1, 4), best[..., None], axis=1)
    out_classes = (best // top_k + 1).astype(jnp.int32)

    pad = max_detections - num_out  # fewer candidates than requested detections
    detections = Detections(
        boxes=jnp.where(found[..., None], out_boxes, 0.0),
        scores=jnp.where(found, best_scores, 0.0),
        classes=jnp.where(found, out_classes, 0),
        num_detections=jnp.sum(found, axis=-1).astype(jnp.int32),
    )
    if pad:
        detections = detections._replace(
            boxes=jnp.pad(detections.boxes, ((0, 0), (0, pad), (0, 0))),
            scores=jnp.pad(detections.scores, ((0, 0), (0, pad))),
            classes=jnp.pad(detections.classes, ((0, 0), (0, pad))),
        )
    return detections
