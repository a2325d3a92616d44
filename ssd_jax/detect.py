"""``detect(params, images)``: one XLA program from raw pixels to padded detections."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import boxes as box_lib
from ssd_jax import configs
from ssd_jax.configs import SSDConfig
from ssd_jax.models.ssd import SSD, check_params
from ssd_jax.nms import Detections, batched_nms
from ssd_jax.priors import priors


def resize_images(images, size: int):
    """[B, H, W, 3] -> float32 [B, size, size, 3], bilinear with half-pixel centres.

    No antialiasing, like torchvision's ``interpolate(mode='bilinear')`` and ``tf.image.resize``,
    so that training inputs, torchvision and ``detect`` see the same pixels.
    """
    images = images.astype(jnp.float32)
    if images.shape[1:3] == (size, size):
        return images
    shape = (images.shape[0], size, size, images.shape[3])
    return jax.image.resize(images, shape, method="bilinear", antialias=False)


def postprocess(locations, logits, config: SSDConfig, **nms_options) -> Detections:
    """Head outputs [B, P, 4], [B, P, C] -> ``Detections``: softmax, decode, clip, per-class NMS."""
    scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    boxes = box_lib.decode(locations, jnp.asarray(priors(config)), config.variances, config.decode_clamp)
    if config.clip_boxes:
        boxes = jnp.clip(boxes, 0.0, 1.0)
    return batched_nms(boxes, scores, **nms_options)


@functools.partial(jax.jit, static_argnames=("config", "dtype", "score_threshold", "iou_threshold",
                                             "pre_nms_top_k", "max_detections"))
def _detect(params, images, *, config, dtype, score_threshold, iou_threshold, pre_nms_top_k,
            max_detections) -> Detections:
    pixels = resize_images(images, config.image_size)
    locations, logits = SSD(config, dtype=dtype).apply({"params": params}, pixels)
    return postprocess(locations, logits, config, score_threshold=score_threshold,
                       iou_threshold=iou_threshold, pre_nms_top_k=pre_nms_top_k,
                       max_detections=max_detections)


def check_images(images) -> None:
    """Raises ``ValueError`` unless ``images`` is a non-empty [B, H, W, 3] uint8 or float batch."""
    shape, dtype = np.shape(images), np.dtype(getattr(images, "dtype", np.asarray(images).dtype))
    if len(shape) != 4:
        raise ValueError(f"images must have rank 4 [B, H, W, 3], got shape {shape}; "
                         "add a batch axis for one image (images[None])")
    if shape[-1] != 3:
        raise ValueError(f"images must be RGB with 3 channels last (NHWC), got {shape[-1]} channels "
                         f"in shape {shape}")
    if shape[0] == 0 or shape[1] == 0 or shape[2] == 0:
        raise ValueError(f"images must be non-empty, got shape {shape}")
    if not (dtype == np.uint8 or jnp.issubdtype(dtype, jnp.floating)):
        raise ValueError(f"images must be uint8 or floating point RGB in [0, 255], got dtype {dtype}")


def detect(
    params,
    images,
    *,
    config: SSDConfig | None = None,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    pre_nms_top_k: int = 400,
    max_detections: int = 200,
    dtype: Any = jnp.float32,
) -> Detections:
    """Detects objects in a batch of images.

    Args:
      params: the model's 'params' pytree (``ssd_jax.init`` or imported weights).
      images: [B, H, W, 3] RGB, uint8 or float in [0, 255], any H and W: resized inside the
        program to the config's input size.
      config: the model config; defaults to ``configs.ssd300()`` (VOC, 21 classes).
      score_threshold, iou_threshold, pre_nms_top_k, max_detections: SSD's post-processing.
      dtype: compute dtype of the network, e.g. ``jnp.bfloat16`` (parameters stay float32).
    Returns:
      ``Detections`` with boxes [B, K, 4] normalised (xmin, ymin, xmax, ymax) of the input image,
      scores [B, K], classes [B, K] (1..C-1) and num_detections [B]; K = max_detections.

    One program is compiled per input shape and options; repeated calls reuse it.
    """
    config = configs.ssd300() if config is None else config
    check_images(images)
    check_params(params, config)
    if not 0 <= score_threshold < 1 or not 0 < iou_threshold <= 1:
        raise ValueError(f"need 0 <= score_threshold < 1 and 0 < iou_threshold <= 1, got "
                         f"{score_threshold}, {iou_threshold}")
    if pre_nms_top_k < 1 or max_detections < 1:
        raise ValueError(f"pre_nms_top_k and max_detections must be >= 1, got {pre_nms_top_k}, {max_detections}")
    return _detect(params, images, config=config, dtype=jnp.dtype(dtype),
                   score_threshold=float(score_threshold), iou_threshold=float(iou_threshold),
                   pre_nms_top_k=int(pre_nms_top_k), max_detections=int(max_detections))
