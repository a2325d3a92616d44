"""Default boxes (priors) of an SSD config, as numpy constants."""

from __future__ import annotations

import functools

import numpy as np

from ssd_jax.configs import SSDConfig


def box_shapes(config: SSDConfig, source: int) -> np.ndarray:
    """Normalised (w, h) of the default boxes at one cell of ``source`` -> [A, 2], float64.

    Order: (s, s); (s', s') with s' = sqrt(s * s_max); then (s*sqrt(r), s/sqrt(r)) and
    (s/sqrt(r), s*sqrt(r)) for each aspect ratio r.
    """
    s = config.min_sizes[source] / config.image_size
    s_max = config.max_sizes[source] / config.image_size
    s_prime = np.sqrt(s * s_max)
    shapes = [(s, s), (s_prime, s_prime)]
    for ratio in config.aspect_ratios[source]:
        root = np.sqrt(ratio)
        shapes += [(s * root, s / root), (s / root, s * root)]
    return np.asarray(shapes, dtype=np.float64)


@functools.lru_cache(maxsize=32)
def priors(config: SSDConfig) -> np.ndarray:
    """All default boxes of ``config`` -> float32 [P, 4] (cx, cy, w, h), normalised.

    Ordered by source, then row, column, box: the order in which the heads' outputs are
    flattened. Cell (i, j) of a source with step ``t`` is centred at ((j + .5) t / S, (i + .5) t / S).
    The result is cached and read-only.
    """
    per_source = []
    for source, size in enumerate(config.feature_map_sizes):
        shapes = box_shapes(config, source)  # [A, 2]
        if config.prior_clip == "wh":
            shapes = np.clip(shapes, 0.0, 1.0)
        centers = (np.arange(size) + 0.5) * config.steps[source] / config.image_size
        cy, cx = np.meshgrid(centers, centers, indexing="ij")  # [S, S]
        xy = np.stack([cx, cy], axis=-1)[:, :, None, :]  # [S, S, 1, 2]
        xy = np.broadcast_to(xy, (size, size, len(shapes), 2))
        wh = np.broadcast_to(shapes, (size, size, len(shapes), 2))
        per_source.append(np.concatenate([xy, wh], axis=-1).reshape(-1, 4))
    boxes = np.concatenate(per_source, axis=0)
    if config.prior_clip == "all":
        boxes = np.clip(boxes, 0.0, 1.0)
    elif config.prior_clip == "corners":  # clip (xmin, ymin, xmax, ymax), back to centre form
        corners = np.clip(np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1), 0, 1)
        boxes = np.concatenate([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], 1)
    boxes = boxes.astype(np.float32)
    boxes.setflags(write=False)
    return boxes
