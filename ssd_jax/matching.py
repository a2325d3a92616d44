"""Matching default boxes to padded ground truth, vectorised and jittable."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssd_jax import boxes as box_lib


class MatchTargets(NamedTuple):
    """Training targets for the P default boxes of one image (a leading batch axis under vmap).

    locations: [P, 4] float32, encoded offsets of the matched box (zero for negatives).
    labels:    [P] int32, class of the matched box, 0 (background) for negatives.
    positive:  [P] bool.
    """

    locations: jax.Array
    labels: jax.Array
    positive: jax.Array


def match(
    priors,
    gt_boxes,
    gt_labels,
    gt_mask,
    *,
    iou_threshold: float = 0.5,
    variances=box_lib.DEFAULT_VARIANCES,
) -> MatchTargets:
    """Assigns ground truth to default boxes as SSD does.

    First every valid ground-truth box takes the prior with which it has the highest IoU (a
    forced match, so that no object goes unlearnt); then every other prior whose best IoU with
    any valid box is >= ``iou_threshold`` takes that box. Ties go to the lowest index: the first
    prior for a box, the first box for a prior; when two boxes force the same prior, the later box
    wins (as a sequential loop over boxes would leave it). With no valid box, all is background.

    Args:
      priors: [P, 4] default boxes (cx, cy, w, h).
      gt_boxes: [G, 4] ground truth (xmin, ymin, xmax, ymax), padded to a fixed G.
      gt_labels: [G] int class ids (1..C-1 for objects).
      gt_mask: [G] bool, True for real boxes and False for padding.
    Returns:
      ``MatchTargets`` for the P priors. Use ``jax.vmap`` over a batch.
    """
    num_priors, num_gt = priors.shape[0], gt_boxes.shape[0]
    iou = box_lib.pairwise_iou(gt_boxes, box_lib.centers_to_corners(priors))  # [G, P]
    iou = jnp.where(gt_mask[:, None], iou, -1.0)  # padding never wins

    best_gt = jnp.argmax(iou, axis=0)  # [P]
    best_gt_iou = jnp.max(iou, axis=0)  # [P]

    # Forced matches: prior best_prior[g] belongs to box g. A box that overlaps no prior at
    # all (degenerate) forces nothing. Scatter-max makes "the later box wins" deterministic.
    best_prior = jnp.argmax(iou, axis=1)  # [G]
    forces = gt_mask & (jnp.max(iou, axis=1) > 0)
    forcing_gt = jnp.full((num_priors,), -1, jnp.int32).at[best_prior].max(
        jnp.where(forces, jnp.arange(num_gt, dtype=jnp.int32), -1)
    )
    forced = forcing_gt >= 0

    matched_gt = jnp.where(forced, forcing_gt, best_gt)  # [P]
    positive = forced | (best_gt_iou >= iou_threshold)
    labels = jnp.where(positive, gt_labels[matched_gt], 0).astype(jnp.int32)
    # Encode every prior against its box, then zero the negatives (their log of a zero-size
    # padding box would be -inf).
    locations = box_lib.encode(gt_boxes[matched_gt], priors, variances)
    locations = jnp.where(positive[:, None], locations, 0.0)
    return MatchTargets(locations.astype(jnp.float32), labels, positive)


def match_batch(priors, gt_boxes, gt_labels, gt_mask, **kwargs) -> MatchTargets:
    """``match`` over a batch: gt_* [B, G, ...] -> ``MatchTargets`` with a leading B axis."""
    return jax.vmap(lambda boxes, labels, mask: match(priors, boxes, labels, mask, **kwargs))(
        gt_boxes, gt_labels, gt_mask)
