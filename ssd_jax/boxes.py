"""Box formats, IoU and the SSD box coding.

Conventions: corner boxes are (xmin, ymin, xmax, ymax), centre boxes (cx, cy, w, h), both
normalised to [0, 1]. All functions broadcast over leading dimensions and work under ``jit``.
"""

from __future__ import annotations

import jax.numpy as jnp

DEFAULT_VARIANCES = (0.1, 0.2)


def corners_to_centers(boxes):
    """(xmin, ymin, xmax, ymax) [..., 4] -> (cx, cy, w, h) [..., 4]."""
    lo, hi = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([(lo + hi) / 2, hi - lo], axis=-1)


def centers_to_corners(boxes):
    """(cx, cy, w, h) [..., 4] -> (xmin, ymin, xmax, ymax) [..., 4]."""
    center, size = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([center - size / 2, center + size / 2], axis=-1)


def area(boxes):
    """Corner boxes [..., 4] -> areas [...]; inverted boxes count as empty."""
    size = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
    return size[..., 0] * size[..., 1]


def intersection(boxes_a, boxes_b):
    """Intersection areas of corner boxes [..., 4] and [..., 4], broadcast against each other -> [...]."""
    lo = jnp.maximum(boxes_a[..., :2], boxes_b[..., :2])
    hi = jnp.minimum(boxes_a[..., 2:], boxes_b[..., 2:])
    wh = jnp.maximum(hi - lo, 0.0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(boxes_a, boxes_b):
    """Intersection over union of corner boxes [..., N, 4] x [..., M, 4] -> [..., N, M].

    Pairs whose union is empty (two degenerate boxes) get 0 rather than NaN.
    """
    overlap = intersection(boxes_a[..., :, None, :], boxes_b[..., None, :, :])
    union = area(boxes_a)[..., :, None] + area(boxes_b)[..., None, :] - overlap
    return jnp.where(union > 0, overlap / jnp.where(union > 0, union, 1.0), 0.0)


def encode(boxes, priors, variances=DEFAULT_VARIANCES):
    """Corner boxes [..., 4] relative to centre priors [..., 4] -> offsets (tx, ty, tw, th).

    The paper's coding: t_xy = (g_c - p_c) / (v0 * p_wh), t_wh = log(g_wh / p_wh) / v1.
    """
    g = corners_to_centers(boxes)
    t_center = (g[..., :2] - priors[..., :2]) / (variances[0] * priors[..., 2:])
    t_size = jnp.log(g[..., 2:] / priors[..., 2:]) / variances[1]
    return jnp.concatenate([t_center, t_size], axis=-1)


def decode(offsets, priors, variances=DEFAULT_VARIANCES, max_log_scale=None):
    """Offsets [..., 4] against centre priors [..., 4] -> corner boxes [..., 4].

    ``max_log_scale`` bounds the decoded log-scale before ``exp`` (torchvision uses
    log(1000 / 16)), so that a wild prediction cannot overflow.
    """
    center = priors[..., :2] + offsets[..., :2] * variances[0] * priors[..., 2:]
    log_scale = offsets[..., 2:] * variances[1]
    if max_log_scale is not None:
        log_scale = jnp.minimum(log_scale, max_log_scale)
    size = priors[..., 2:] * jnp.exp(log_scale)
    return jnp.concatenate([center - size / 2, center + size / 2], axis=-1)
