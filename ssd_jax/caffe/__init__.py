"""Caffe SSD models in ssd_jax, without Caffe: ``from_caffe(prototxt, caffemodel)``.

The deploy prototxt (protobuf text format) gives the network and the SSD settings; the
caffemodel (binary protobuf) gives the weights. Both are read here with a small reader of the
two protobuf encodings and the few Caffe message fields SSD models use, so neither Caffe nor
the protobuf schema is needed.

What is understood:
- base network: Convolution (groups, dilation), BatchNorm and Scale (folded into the
  convolution before them, else kept as a per-channel affine layer: pre-activation ResNets),
  ReLU, Pooling (MAX, AVE; Caffe rounds output sizes up), Eltwise (SUM), Normalize (across
  channels), Concat (channels), Dropout and Split (pass-through);
- SSD: the mbox_loc / mbox_conf Convolutions and their Permute / Flatten / Reshape / Softmax /
  Concat plumbing, PriorBox (one min_size and max_size per source, aspect ratios with flip, clip,
  step, offset 0.5, variances (v0, v0, v1, v1)) and DetectionOutput (classes, thresholds, top_k,
  keep_top_k, CENTER_SIZE code); ssd_jax's own heads and post-processing do this work.
Anything else is named in a ``CaffeImportError``.

Input: Caffe SSD models take BGR pixels minus a BGR mean. ssd_jax takes RGB, so the layers that
read the input directly (up to and including the first convolutions) get their channels
reversed, and ``mean_rgb`` is the reversed mean.

Modules: ``prototxt`` (the text format), ``caffemodel`` (the binary format), ``heads`` (SSD's
heads, default boxes and DetectionOutput), ``network`` (the base network's layers and weights).
The imported network runs as ``ssd_jax.models.caffe_net.CaffeNet``, its layer graph the
config's ``backbone`` settings.
"""

from __future__ import annotations

import os

import numpy as np

from ssd_jax.caffe import heads, network
from ssd_jax.caffe.caffemodel import read_caffemodel
from ssd_jax.caffe.prototxt import CaffeImportError, one, param, parse_prototxt
from ssd_jax.configs import SSDConfig
from ssd_jax.models.caffe_net import CaffeNetSettings, blob_sizes

__all__ = ["WEILIU89_MEAN_BGR", "CaffeImportError", "from_caffe", "network_from_prototxt", "parse_prototxt",
           "read_caffemodel"]

# weiliu89's SSD models subtract this BGR mean (their training prototxts' transform_param).
WEILIU89_MEAN_BGR = (104.0, 117.0, 123.0)


def network_from_prototxt(net: dict, weights: dict[str, list[np.ndarray]], *,
                          mean_bgr: tuple[float, float, float] | None = None, input_bgr: bool = True,
                          net_name: str | None = None) -> tuple[SSDConfig, dict]:
    """A parsed deploy prototxt and its weights -> (SSDConfig, params) of an ssd_jax SSD, named
    after the prototxt's ``name`` (else ``net_name``)."""
    input_blob, image_size = network.input_of(net)
    if net.get("layers"):
        raise CaffeImportError("the prototxt uses the old V1 'layers' syntax: upgrade it with Caffe's "
                               "upgrade_net_proto_text first")
    layers = [layer for layer in net.get("layer", []) if not network.is_test_only_excluded(layer)]
    loc_heads, conf_heads, prior_layers, detection = heads.trace_heads(layers)

    def blobs_of(name: str, want: int) -> list[np.ndarray]:
        found = weights.get(name)
        if not found or len(found) < want:
            raise CaffeImportError(f"layer {name!r}: the caffemodel has {len(found or [])} blobs for it, needs {want}")
        return found

    # --- the base network, up to the blobs the heads read
    steps, head_inputs, readers = network.base_layers(
        layers, {one(layer, "name") for layer in loc_heads + conf_heads}, input_blob)
    sources = tuple(head_inputs[one(head, "name")] for head in loc_heads)
    for loc, conf in zip(loc_heads, conf_heads):
        if head_inputs[one(conf, "name")] != head_inputs[one(loc, "name")]:
            raise CaffeImportError(f"heads {one(loc, 'name')!r} and {one(conf, 'name')!r} read different blobs")
    readers.update(sources)
    spec, params = network.pruned(*network.layers_and_params(steps, readers, blobs_of), sources)
    if input_bgr:
        network.reverse_input_channels(spec, params, input_blob)

    # --- default boxes, heads and post-processing
    sizes = blob_sizes(tuple(spec), input_blob, image_size)
    priors = heads.prior_settings(prior_layers, image_size, [sizes[s] for s in sources])
    total_priors = sum(sizes[s] ** 2 * (2 + 2 * len(r)) for s, r in zip(sources, priors["aspect_ratios"]))
    num_classes, postprocess, clip_boxes = heads.postprocess_options(detection, total_priors)
    head_params = heads.head_params(loc_heads, conf_heads, priors["aspect_ratios"], num_classes, blobs_of,
                                    network.conv_params)
    prototxt_mean, scale = transform_of(net)
    mean = tuple(float(m) for m in (mean_bgr if mean_bgr is not None else prototxt_mean or WEILIU89_MEAN_BGR))
    config = SSDConfig(
        name=f"caffe_{network.sanitize(str(one(net, 'name', net_name or 'ssd')))}",
        num_classes=num_classes,
        image_size=image_size,
        feature_map_sizes=tuple(sizes[s] for s in sources),
        backbone=CaffeNetSettings(layers=tuple(spec), sources=sources, input_blob=input_blob),
        clip_boxes=clip_boxes,
        mean_rgb=mean[::-1] if input_bgr else mean,
        std_rgb=(1.0 / scale,) * 3 if scale else (1.0, 1.0, 1.0),
        postprocess=postprocess,
        **priors,
    )
    return config, {"backbone": params, **head_params}


def transform_of(net: dict) -> tuple[tuple[float, float, float] | None, float | None]:
    """The mean (input channel order) and scale of a prototxt's transform_param (data layers of
    training prototxts; deploy prototxts rarely have one): pixels -> (pixels - mean) * scale."""
    for layer in net.get("layer", []):
        transform = param(layer, "transform_param")
        if transform:
            values = [float(v) for v in transform.get("mean_value", [])]
            mean = (tuple(values * 3)[:3] if len(values) == 1 else tuple(values[:3])) if values else None
            scale = one(transform, "scale")
            return mean, float(scale) if scale else None
    return None, None


def from_caffe(prototxt: str | os.PathLike, caffemodel: str | os.PathLike, *,
               mean_bgr: tuple[float, float, float] | None = None,
               input_bgr: bool = True) -> tuple[dict, SSDConfig]:
    """A Caffe SSD (deploy prototxt + caffemodel) -> (params, config) for ``ssd_jax.detect``.

    ``mean_bgr``: the mean the model was trained with, in its input's channel order (deploy
    prototxts rarely state it; default: a ``transform_param`` in the prototxt, whose ``scale``
    is read too, else weiliu89's (104, 117, 123)). OpenCV's res10 face detector needs (104, 177,
    123). ``input_bgr=False`` for a model trained on RGB: no channel is reversed. Raises
    ``CaffeImportError`` naming unsupported layers or settings, ``FileNotFoundError`` for
    missing files.
    """
    prototxt = os.fspath(prototxt)
    if not os.path.isfile(prototxt):
        raise FileNotFoundError(f"prototxt not found: {prototxt}")
    with open(prototxt, encoding="utf-8", errors="replace") as f:
        net = parse_prototxt(f.read())
    weights = read_caffemodel(caffemodel)
    stem = os.path.splitext(os.path.basename(os.fspath(caffemodel)))[0]
    config, params = network_from_prototxt(net, weights, mean_bgr=mean_bgr, input_bgr=input_bgr, net_name=stem)
    from ssd_jax.models.ssd import check_params

    check_params(params, config)
    return params, config

