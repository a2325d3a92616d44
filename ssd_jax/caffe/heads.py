"""SSD's own layers in a Caffe deploy prototxt: the loc and conf heads and the PriorBox layers
they pair with, traced back from DetectionOutput through their Permute / Flatten / Concat
plumbing, and the settings they hold (default boxes, thresholds) in ssd_jax's terms."""

from __future__ import annotations

from ssd_jax.caffe.prototxt import CaffeImportError, one, param
from ssd_jax.caffe.prototxt import size as caffe_size
from ssd_jax.nms import PostprocessOptions

# Layers that only move the heads' outputs around: ssd_jax's heads and post-processing do their work.
HEAD_PLUMBING = ("Permute", "Flatten", "Reshape", "Softmax", "Concat", "PriorBox", "DetectionOutput")


def trace_heads(layers: list[dict]) -> tuple[list[dict], list[dict], list[dict], dict]:
    """From DetectionOutput back to the per-source loc convs, conf convs and PriorBoxes, in order."""
    outputs = [layer for layer in layers if one(layer, "type") == "DetectionOutput"]
    if len(outputs) != 1:
        raise CaffeImportError(f"the prototxt has {len(outputs)} DetectionOutput layers; an SSD deploy prototxt "
                               "has one")
    detection = outputs[0]
    bottoms = detection.get("bottom", [])
    if len(bottoms) < 3:
        raise CaffeImportError("DetectionOutput needs loc, conf and prior bottoms")
    writers: dict[str, list[dict]] = {}
    for layer in layers:
        for top in layer.get("top", []):
            writers.setdefault(top, []).append(layer)

    def leaves(blob: str, want: str, seen=()) -> list[dict]:
        """The layers of type ``want`` that feed ``blob`` through head plumbing, in concat order."""
        for layer in reversed(writers.get(blob, [])):
            kind = one(layer, "type")
            if kind == want:
                return [layer]
            if kind in ("Permute", "Flatten", "Reshape", "Softmax", "Concat"):
                found = []
                for bottom in layer.get("bottom", []):
                    if (bottom, kind) in seen:
                        continue
                    found += leaves(bottom, want, (*seen, (bottom, kind)))
                return found
        raise CaffeImportError(f"cannot trace {blob!r} back to {want} layers through Permute/Flatten/Concat")

    loc = leaves(bottoms[0], "Convolution")
    conf = leaves(bottoms[1], "Convolution")
    priors = leaves(bottoms[2], "PriorBox")
    if not (len(loc) == len(conf) == len(priors)):
        raise CaffeImportError(f"{len(loc)} loc heads, {len(conf)} conf heads and {len(priors)} PriorBox layers: "
                               "they must pair up, one per source")
    return loc, conf, priors, detection


def prior_settings(priors: list[dict], image_size: int, sizes: list[int]) -> dict:
    mins, maxs, ratios, steps, clips, variances = [], [], [], [], set(), set()
    for layer, map_size in zip(priors, sizes):
        name = one(layer, "name")
        p = param(layer, "prior_box_param")
        if len(p.get("min_size", [])) != 1 or len(p.get("max_size", [])) != 1:
            raise CaffeImportError(f"PriorBox {name!r}: exactly one min_size and one max_size per source are "
                                   f"supported, got {p.get('min_size')} / {p.get('max_size')}")
        if float(one(p, "offset", 0.5)) != 0.5:
            raise CaffeImportError(f"PriorBox {name!r}: offset {one(p, 'offset')} is not supported (0.5)")
        image = caffe_size(p, "img_size", image_size)
        if image != image_size:
            raise CaffeImportError(f"PriorBox {name!r}: img_size {image} differs from the input size {image_size}")
        flip = bool(one(p, "flip", True))
        unique: list[float] = []
        seen = [1.0]  # as Caffe: a ratio already present, or the flip of one, adds nothing
        for ratio in p.get("aspect_ratio", []):
            ratio = float(ratio)
            if any(abs(ratio - r) < 1e-6 for r in seen):
                continue
            unique.append(ratio)
            seen += [ratio, 1.0 / ratio] if flip else [ratio]
        if unique and not flip:
            raise CaffeImportError(f"PriorBox {name!r}: aspect ratios without flip are not supported")
        mins.append(float(p["min_size"][0]))
        maxs.append(float(p["max_size"][0]))
        ratios.append(tuple(unique))
        step = one(p, "step") or one(p, "step_h")
        steps.append(float(step) if step else image_size / map_size)
        clips.add(bool(one(p, "clip", False)))
        variance = tuple(float(v) for v in p.get("variance", [0.1]))
        if len(variance) == 1:
            variance = variance * 4
        if len(variance) != 4 or variance[0] != variance[1] or variance[2] != variance[3]:
            raise CaffeImportError(f"PriorBox {name!r}: variances {variance} must be (v0, v0, v1, v1)")
        variances.add((variance[0], variance[2]))
    if len(clips) != 1 or len(variances) != 1:
        raise CaffeImportError("PriorBox layers disagree on clip or variance: one value for all is supported")
    return {"min_sizes": tuple(mins), "max_sizes": tuple(maxs), "aspect_ratios": tuple(ratios),
            "steps": tuple(steps), "prior_clip": "corners" if clips.pop() else "none", "variances": variances.pop()}


def postprocess_options(detection: dict, total_priors: int) -> tuple[int, PostprocessOptions, bool]:
    """DetectionOutput's settings -> (classes with the background, detect's post-processing
    options, whether boxes are clipped to the image). A top_k or keep_top_k of -1 (all) becomes
    the number of default boxes."""
    p = param(detection, "detection_output_param")
    nms = param(p, "nms_param")
    if int(one(p, "background_label_id", 0)) != 0 or not one(p, "share_location", True):
        raise CaffeImportError("DetectionOutput: background_label_id 0 and share_location are required")
    code_type = one(p, "code_type", "CORNER")  # caffe.proto's default
    if code_type not in ("CENTER_SIZE", 2) or one(p, "variance_encoded_in_target", False):
        raise CaffeImportError(f"DetectionOutput: code_type {code_type}: only CENTER_SIZE with variances not in the "
                               "target is supported")
    if float(one(nms, "eta", 1.0)) != 1.0:
        raise CaffeImportError("DetectionOutput: adaptive NMS (eta != 1) is not supported")
    top_k, keep_top_k = int(one(nms, "top_k", -1)), int(one(p, "keep_top_k", -1))
    options = PostprocessOptions(score_threshold=float(one(p, "confidence_threshold", 0.0)),
                                 iou_threshold=float(one(nms, "nms_threshold", 0.3)),
                                 pre_nms_top_k=top_k if top_k > 0 else total_priors,
                                 max_detections=keep_top_k if keep_top_k > 0 else total_priors)
    return int(one(p, "num_classes")), options, bool(one(p, "clip", False))


def head_params(loc_heads: list[dict], conf_heads: list[dict], aspect_ratios, num_classes: int, blobs_of,
                conv_params) -> dict:
    """The heads' weights as ``loc_i`` / ``conf_i`` parameters, each checked to be a 3x3
    convolution with pad 1 and as many outputs as its PriorBox's boxes need."""
    params = {}
    for i, (loc, conf) in enumerate(zip(loc_heads, conf_heads)):
        boxes = 2 + 2 * len(aspect_ratios[i])
        for head, kind, width in ((loc, "loc", 4), (conf, "conf", num_classes)):
            name = one(head, "name")
            head_spec, params[f"{kind}_{i}"] = conv_params(head, blobs_of(name, 1), name)
            if (head_spec["kernel"], head_spec["pad"], head_spec["stride"], head_spec["groups"]) != (3, 1, 1, 1):
                raise CaffeImportError(f"head {name!r}: a 3x3 convolution with pad 1 is expected")
            if head_spec["features"] != boxes * width:
                raise CaffeImportError(f"head {name!r} has {head_spec['features']} outputs; {boxes} boxes x {width} "
                                       "expected from its PriorBox")
    return params
