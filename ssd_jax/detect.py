"""``detect(params, images)``: one XLA program from raw pixels to padded detections."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.layout import Format, Layout

from ssd_jax import boxes as box_lib
from ssd_jax import configs
from ssd_jax.configs import SSDConfig
from ssd_jax.models.ssd import SSD, check_params
from ssd_jax.nms import DEFAULTS, Detections, PostprocessOptions, batched_nms, nms_stages
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


def postprocess_options(config: SSDConfig) -> PostprocessOptions:
    """The post-processing defaults of ``config``: its own (an imported Caffe model's
    DetectionOutput) or SSD's (``nms.DEFAULTS``)."""
    return DEFAULTS if config.postprocess is None else config.postprocess


def postprocess(locations, logits, config: SSDConfig, *, with_stage: bool = False, **nms_options):
    """Head outputs [B, P, 4], [B, P, C] -> ``Detections``: softmax, decode, clip, per-class NMS.

    ``with_stage``: return (Detections, the stage of ``batched_nms`` that ran) (benchmarks use it).
    """
    scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    boxes = box_lib.decode(locations, jnp.asarray(priors(config)), config.variances, config.decode_clamp)
    if config.clip_boxes:
        boxes = jnp.clip(boxes, 0.0, 1.0)
    if with_stage:
        return nms_stages(boxes, scores, **nms_options)
    return batched_nms(boxes, scores, **nms_options)


def cast_params(params, dtype):
    """``params`` with every convolution's kernel and bias in ``dtype``; the rest (L2Norm's scale,
    a Caffe model's Scale layers) stays float32.

    The model casts those parameters to its compute dtype inside every call; casting them once,
    before calling ``detect(..., dtype=dtype)`` repeatedly, spares each call the conversions: on
    a GPU one kernel per convolution and half the weight bytes read (the counts:
    benchmarks/RESULTS.md). Keep float32 parameters for training and checkpoints. The detections are equal to bfloat16
    rounding, not bitwise: given float32 weights, XLA may skip rounding them (it allows excess
    precision), as XLA:CPU does.
    """
    dtype = jnp.dtype(dtype)

    def cast(path, leaf):
        is_conv = path and getattr(path[-1], "key", None) in ("kernel", "bias")
        return leaf.astype(dtype) if is_conv and jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree_util.tree_map_with_path(cast, params)


# On H100 and H200 GPUs, float32 batches above 32 fall off a cliff in cuDNN's fused convolution +
# bias + ReLU call that XLA rewrites the layers into; slices of 32 inside the same program avoid it
# (the figures: benchmarks/RESULTS.md).
FLOAT32_GPU_NETWORK_BATCH = 32


def default_network_batch(batch: int, dtype) -> int | None:
    """Slices for the network in ``detect``: 32 images for float32 on a GPU, else the whole batch."""
    if jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "gpu" and batch > FLOAT32_GPU_NETWORK_BATCH:
        return FLOAT32_GPU_NETWORK_BATCH
    return None


def run_network(params, pixels, config: SSDConfig, *, dtype=jnp.float32, network_batch: int | None = None):
    """pixels [B, S, S, 3] -> (locations [B, P, 4], logits [B, P, C]), ``network_batch`` images
    at a time if given (``lax.map`` over slices of the batch, the last one padded)."""
    model = SSD(config, dtype=dtype)
    batch = pixels.shape[0]
    if not network_batch or batch <= network_batch:
        return model.apply({"params": params}, pixels)
    slices = -(-batch // network_batch)
    padded = jnp.pad(pixels, ((0, slices * network_batch - batch), (0, 0), (0, 0), (0, 0)))
    padded = padded.reshape(slices, network_batch, *pixels.shape[1:])
    locations, logits = jax.lax.map(lambda x: model.apply({"params": params}, x), padded)
    return (locations.reshape(-1, *locations.shape[2:])[:batch], logits.reshape(-1, *logits.shape[2:])[:batch])


@functools.partial(jax.jit, static_argnames=("config", "dtype", "score_threshold", "iou_threshold",
                                             "pre_nms_top_k", "max_detections", "network_batch"))
def _detect(params, images, *, config, dtype, score_threshold, iou_threshold, pre_nms_top_k,
            max_detections, network_batch) -> Detections:
    pixels = resize_images(images, config.image_size)
    locations, logits = run_network(params, pixels, config, dtype=dtype, network_batch=network_batch)
    return postprocess(locations, logits, config, score_threshold=score_threshold,
                       iou_threshold=iou_threshold, pre_nms_top_k=pre_nms_top_k,
                       max_detections=max_detections)


def resize_each_image(images, size: int):
    """A list of [H_i, W_i, 3] images of any sizes -> float32 [B, size, size, 3].

    Each image goes through ``resize_images`` on its own, outside the detection program, so that
    the program sees one shape whatever the sizes (one compilation of the resize per image size).
    """
    return jnp.stack([resize_images(image[None], size)[0] for image in images])


def _as_array(image):
    """Arrays and tracers as they are; anything else (a PIL image, nested lists) as a numpy array."""
    return image if hasattr(image, "shape") and hasattr(image, "dtype") else np.asarray(image)


def _check_finite(pixels, what: str) -> None:
    """Raises ``ValueError`` naming how many pixels [..., 3] of host ``pixels`` are NaN or infinite.

    jax arrays and tracers are not read: that would copy them to the host (or is impossible).
    """
    if isinstance(pixels, jax.Array) or not jnp.issubdtype(pixels.dtype, jnp.floating):
        return
    bad = ~np.all(np.isfinite(pixels), axis=-1)
    count = int(np.count_nonzero(bad))
    if count:
        where = ""
        if bad.ndim == 3:  # a batch: say which images
            images = np.flatnonzero(bad.any(axis=(1, 2))).tolist()
            where = f" in image(s) {images[:10]}" + (" ..." if len(images) > 10 else "")
        raise ValueError(f"{what}: {count} of {bad.size} pixels are NaN or infinite{where}; replace them "
                         "(e.g. np.nan_to_num) or leave those images out")


def _check_pixels(pixels, *, rank: int, what: str) -> None:
    """Shape and dtype checks of one batch (rank 4) or one image of a list (rank 3), then finiteness."""
    shape, dtype = np.shape(pixels), np.dtype(pixels.dtype)
    if len(shape) != rank:
        if rank == 4:
            raise ValueError(f"images must have rank 4 [B, H, W, 3], got shape {shape}; add a batch axis for "
                             "one image (images[None]), or pass a list of [H, W, 3] images")
        raise ValueError(f"{what} must be one image [H, W, 3] in a list of images, got shape {shape}")
    if shape[-1] != 3:
        raise ValueError(f"{what} must be RGB with 3 channels last (NHWC), got {shape[-1]} channels "
                         f"in shape {shape}")
    if 0 in shape:
        raise ValueError(f"{what} must be non-empty, got shape {shape}")
    if not (dtype == np.uint8 or jnp.issubdtype(dtype, jnp.floating)):
        raise ValueError(f"{what} must be uint8 or floating point RGB in [0, 255], got dtype {dtype}")
    _check_finite(pixels, what)


def check_images(images) -> None:
    """Raises ``ValueError`` unless ``images`` is a non-empty [B, H, W, 3] uint8 or float batch, or a
    non-empty list (or tuple) of [H, W, 3] such images.

    Host pixels (numpy arrays, lists) must also be finite. Of jax arrays and tracers only the shape
    and dtype are checked: their values stay where they are (so this works inside ``jax.jit``).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images must be non-empty, got an empty list")
        for i, image in enumerate(images):
            _check_pixels(_as_array(image), rank=3, what=f"images[{i}]")
    else:
        _check_pixels(_as_array(images), rank=4, what="images")


@dataclasses.dataclass(frozen=True)
class DetectOptions:
    """How ``detect`` (and ``compile_detect``, the ``Evaluator``) runs a model: one object for all.

    score_threshold, iou_threshold, pre_nms_top_k, max_detections: SSD's post-processing
      (``nms.batched_nms``); None: the model's own (``config.postprocess``, e.g. an imported
      Caffe model's DetectionOutput), else SSD's 0.01, 0.45, 400 and 200 (``nms.DEFAULTS``).
    dtype: the network's compute dtype, e.g. ``jnp.bfloat16`` (float32 parameters are cast in the
      program; ``cast_params`` casts them once, for repeated calls).
    network_batch: run the network on at most this many images at a time (one program still);
      None: 32 for float32 on a GPU (larger float32 batches run 13 times slower there), else all.
    """

    score_threshold: float | None = None
    iou_threshold: float | None = None
    pre_nms_top_k: int | None = None
    max_detections: int | None = None
    dtype: Any = jnp.float32
    network_batch: int | None = None

    def with_overrides(self, **overrides) -> DetectOptions:
        """These options with some fields replaced; ``TypeError`` naming an unknown one."""
        names = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown detect option(s) {unknown}; the options are {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def resolved(self, config: SSDConfig, batch: int) -> DetectOptions:
        """The options with every default filled in for ``config`` and a batch of ``batch``
        images; ``ValueError`` naming a value out of range."""
        defaults = postprocess_options(config)
        post = {name: getattr(defaults, name) if getattr(self, name) is None else getattr(self, name)
                for name in PostprocessOptions._fields}
        if not 0 <= post["score_threshold"] < 1 or not 0 < post["iou_threshold"] <= 1:
            raise ValueError(f"need 0 <= score_threshold < 1 and 0 < iou_threshold <= 1, got "
                             f"{post['score_threshold']}, {post['iou_threshold']}")
        if post["pre_nms_top_k"] < 1 or post["max_detections"] < 1:
            raise ValueError(f"pre_nms_top_k and max_detections must be >= 1, got {post['pre_nms_top_k']}, "
                             f"{post['max_detections']}")
        if self.network_batch is not None and self.network_batch < 1:
            raise ValueError(f"network_batch must be None or >= 1, got {self.network_batch}")
        network_batch = self.network_batch or default_network_batch(batch, self.dtype)
        return DetectOptions(score_threshold=float(post["score_threshold"]),
                             iou_threshold=float(post["iou_threshold"]), pre_nms_top_k=int(post["pre_nms_top_k"]),
                             max_detections=int(post["max_detections"]), dtype=jnp.dtype(self.dtype),
                             network_batch=None if network_batch is None else int(network_batch))

    def postprocess(self) -> PostprocessOptions:
        """The post-processing part (of resolved options)."""
        return PostprocessOptions(self.score_threshold, self.iou_threshold, self.pre_nms_top_k, self.max_detections)


def _program_options(params, config: SSDConfig | None, options: DetectOptions | None, overrides: dict, batch: int):
    """(config, the program's static options) for detect and compile_detect, checked."""
    config = configs.ssd300() if config is None else config
    options = (options or DetectOptions()).with_overrides(**overrides).resolved(config, batch)
    check_params(params, config)
    return config, {"config": config, **dataclasses.asdict(options)}


def detect(params, images, *, config: SSDConfig | None = None, options: DetectOptions | None = None,
           **overrides) -> Detections:
    """Detects objects in a batch or a list of images.

    Args:
      params: the model's 'params' pytree (``ssd_jax.init`` or imported weights).
      images: RGB pixels, uint8 or float in [0, 255], either
        * a batch [B, H, W, 3] (numpy or jax array), any H and W: resized inside the program to the
          config's input size; or
        * a list (or tuple) of [H, W, 3] images, each of its own size (numpy arrays, jax arrays or
          PIL images): each is resized to the input size before the program, with the same
          bilinear resize, so detecting a list gives (to float rounding) the detections of
          each image alone.
        Numpy or list pixels that are NaN or infinite raise ``ValueError``. jax arrays are not
        read for that (it would copy them to the host): check them yourself, as NaN there gives
        meaningless detections (or none), without an error.
      config: the model config; defaults to ``configs.ssd300()`` (VOC, 21 classes).
      options: a ``DetectOptions`` (post-processing, dtype, network slices); ``overrides``: any of
        its fields by name, on top (``detect(params, images, max_detections=50)``).
    Returns:
      ``Detections`` with boxes [B, K, 4] normalised (xmin, ymin, xmax, ymax) of each input image,
      scores [B, K], classes [B, K] (1..C-1) and num_detections [B]; K = max_detections.

    One program is compiled per input shape (per list length for lists) and options; repeated calls
    reuse it. ``detect`` can run inside the caller's ``jax.jit``. To serve one shape many times,
    ``compile_detect`` compiles it ahead of time with the parameters prepared once.
    """
    if isinstance(images, (list, tuple)):
        images = [_as_array(image) for image in images]
    check_images(images)
    config, program = _program_options(params, config, options, overrides, len(images) if isinstance(
        images, list) else np.shape(images)[0])
    if isinstance(images, list):
        images = resize_each_image(images, config.image_size)
    return _detect(params, images, **program)


def compile_detect(params, images, *, config: SSDConfig | None = None, options: DetectOptions | None = None,
                   **overrides):
    """``detect`` compiled ahead of time for batches shaped like ``images``, with the parameters
    stored the way the compiled program reads them -> ``detect_batch(images) -> Detections``.

    For serving batches of one shape many times: below float32 the convolutions' parameters are
    cast once (``cast_params``), and every parameter is laid out in the memory order that XLA
    chose for its kernels (JAX's AUTO layouts), so that a call neither converts nor transposes
    weights. The detections are ``detect``'s with the same cast parameters.

    Args:
      params: the model's 'params' pytree, float32 (they are copied; the caller's stay as they are).
      images: an example batch [B, H, W, 3] (uint8 or float, numpy or jax): the function takes
        batches of exactly this shape and dtype.
      config, options, overrides: as ``detect``'s.
    Returns:
      a function of a batch [B, H, W, 3] of the example's shape and dtype -> ``Detections``, run
      on the first device (``jax.devices()[0]``).
    """
    images = _as_array(images)
    check_images(images)
    config, program = _program_options(params, config, options, overrides, np.shape(images)[0])
    if program["dtype"] != jnp.float32:
        params = cast_params(params, program["dtype"])
    shape, pixel_dtype = tuple(np.shape(images)), np.dtype(images.dtype)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    any_layout = jax.tree.map(lambda _: Format(Layout.AUTO, device), params)
    compiled = jax.jit(functools.partial(_detect.__wrapped__, **program), in_shardings=(any_layout, device)).lower(
        params, jax.ShapeDtypeStruct(shape, pixel_dtype)).compile()
    params = jax.device_put(params, compiled.input_formats[0][0])

    def detect_batch(batch) -> Detections:
        batch = _as_array(batch)
        if tuple(np.shape(batch)) != shape or np.dtype(batch.dtype) != pixel_dtype:
            raise ValueError(f"this compiled detect takes batches of shape {shape} and dtype {pixel_dtype}, got "
                             f"{tuple(np.shape(batch))} {np.dtype(batch.dtype)}; compile another for that shape")
        check_images(batch)
        return compiled(params, batch)

    return detect_batch
