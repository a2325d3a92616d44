"""Plain numpy float64 reference implementations of SSD's core functions, for the tests.

Written from the spec (the SSD paper and the original Caffe implementation's conventions),
not from the JAX code: explicit loops, one box at a time, so that each rule can be read off
the code. Nothing here is fast; keep the inputs small.

Box formats: corner boxes are (xmin, ymin, xmax, ymax), centre boxes (cx, cy, w, h).
"""

from __future__ import annotations

import math

import numpy as np

VARIANCES = (0.1, 0.2)


# ----------------------------------------------------------------------------------------------
# Boxes


def iou(box_a, box_b) -> float:
    """IoU of two corner boxes; 0 when the union is empty (two degenerate boxes)."""
    ax0, ay0, ax1, ay1 = (float(v) for v in box_a)
    bx0, by0, bx1, by1 = (float(v) for v in box_b)
    area_a = max(ax1 - ax0, 0.0) * max(ay1 - ay0, 0.0)
    area_b = max(bx1 - bx0, 0.0) * max(by1 - by0, 0.0)
    inter_w = max(min(ax1, bx1) - max(ax0, bx0), 0.0)
    inter_h = max(min(ay1, by1) - max(ay0, by0), 0.0)
    inter = inter_w * inter_h
    union = area_a + area_b - inter
    if union <= 0.0:
        return 0.0
    return inter / union


def pairwise_iou(boxes_a, boxes_b) -> np.ndarray:
    """[N, 4] x [M, 4] corner boxes -> [N, M] IoU, float64."""
    boxes_a = np.asarray(boxes_a, np.float64)
    boxes_b = np.asarray(boxes_b, np.float64)
    out = np.zeros((len(boxes_a), len(boxes_b)), np.float64)
    for i, a in enumerate(boxes_a):
        for j, b in enumerate(boxes_b):
            out[i, j] = iou(a, b)
    return out


def center_to_corner(box) -> np.ndarray:
    cx, cy, w, h = (float(v) for v in box)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float64)


def corner_to_center(box) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], np.float64)


def encode(gt_corner, prior_center, variances=VARIANCES) -> np.ndarray:
    """One corner box against one centre prior -> (tx, ty, tw, th)."""
    gcx, gcy, gw, gh = corner_to_center(gt_corner)
    pcx, pcy, pw, ph = (float(v) for v in prior_center)
    return np.array(
        [
            (gcx - pcx) / (variances[0] * pw),
            (gcy - pcy) / (variances[0] * ph),
            math.log(gw / pw) / variances[1],
            math.log(gh / ph) / variances[1],
        ],
        np.float64,
    )


def decode(offsets, prior_center, variances=VARIANCES, max_log_scale=None) -> np.ndarray:
    """(tx, ty, tw, th) against one centre prior -> one corner box."""
    tx, ty, tw, th = (float(v) for v in offsets)
    pcx, pcy, pw, ph = (float(v) for v in prior_center)
    log_w, log_h = tw * variances[1], th * variances[1]
    if max_log_scale is not None:
        log_w, log_h = min(log_w, max_log_scale), min(log_h, max_log_scale)
    cx = pcx + tx * variances[0] * pw
    cy = pcy + ty * variances[0] * ph
    w = pw * math.exp(log_w)
    h = ph * math.exp(log_h)
    return center_to_corner((cx, cy, w, h))


# ----------------------------------------------------------------------------------------------
# Default boxes


def priors(config) -> np.ndarray:
    """All default boxes of an ``SSDConfig`` -> [P, 4] (cx, cy, w, h), float64.

    Order: source, row, column, box. Box order per cell: (s, s), (s', s'), then for each ratio r
    (s sqrt r, s / sqrt r) and (s / sqrt r, s sqrt r).
    """
    size = float(config.image_size)
    out = []
    for k, fmap in enumerate(config.feature_map_sizes):
        step = float(config.steps[k])
        s = config.min_sizes[k] / size
        s_prime = math.sqrt(s * (config.max_sizes[k] / size))
        shapes = [(s, s), (s_prime, s_prime)]
        for r in config.aspect_ratios[k]:
            shapes.append((s * math.sqrt(r), s / math.sqrt(r)))
            shapes.append((s / math.sqrt(r), s * math.sqrt(r)))
        for i in range(fmap):  # row
            for j in range(fmap):  # column
                cx = (j + 0.5) * step / size
                cy = (i + 0.5) * step / size
                for w, h in shapes:
                    box = [cx, cy, w, h]
                    if config.prior_clip == "wh":
                        box = [cx, cy, min(max(w, 0.0), 1.0), min(max(h, 0.0), 1.0)]
                    elif config.prior_clip == "all":
                        box = [min(max(v, 0.0), 1.0) for v in box]
                    out.append(box)
    return np.asarray(out, np.float64)


# ----------------------------------------------------------------------------------------------
# Matching


def match(priors_center, gt_boxes, gt_labels, gt_mask, iou_threshold=0.5, variances=VARIANCES):
    """SSD matching for one image -> (locations [P, 4], labels [P] int, positive [P] bool).

    Step 1: each valid gt box (in index order) whose best IoU with any prior is > 0 takes its best
    prior (first prior on ties); a later gt box overwrites an earlier one on the same prior.
    Step 2: every other prior whose best IoU over the valid gt is >= threshold takes its best gt
    (first gt on ties).
    """
    priors_center = np.asarray(priors_center, np.float64)
    num_priors = len(priors_center)
    prior_corners = [center_to_corner(p) for p in priors_center]
    valid = [g for g in range(len(gt_boxes)) if bool(gt_mask[g])]

    ious = {}
    for g in valid:
        ious[g] = [iou(gt_boxes[g], prior_corners[p]) for p in range(num_priors)]

    assigned = [-1] * num_priors  # gt index per prior
    forced = [False] * num_priors
    for g in valid:  # increasing g: the later box overwrites
        best_p, best_v = -1, -1.0
        for p in range(num_priors):
            if ious[g][p] > best_v:  # strict: ties keep the lowest prior index
                best_p, best_v = p, ious[g][p]
        if best_v > 0.0:
            assigned[best_p] = g
            forced[best_p] = True

    for p in range(num_priors):
        if forced[p]:
            continue
        best_g, best_v = -1, -1.0
        for g in valid:
            if ious[g][p] > best_v:  # strict: ties keep the lowest gt index
                best_g, best_v = g, ious[g][p]
        if best_g >= 0 and best_v >= iou_threshold:
            assigned[p] = best_g

    locations = np.zeros((num_priors, 4), np.float64)
    labels = np.zeros(num_priors, np.int64)
    positive = np.zeros(num_priors, bool)
    for p in range(num_priors):
        g = assigned[p]
        if g >= 0:
            positive[p] = True
            labels[p] = int(gt_labels[g])
            locations[p] = encode(gt_boxes[g], priors_center[p], variances)
    return locations, labels, positive


# ----------------------------------------------------------------------------------------------
# Loss


def log_softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    m = logits.max()
    return logits - m - math.log(np.exp(logits - m).sum())


def cross_entropy(logits, label) -> float:
    return float(-log_softmax(logits)[int(label)])


def smooth_l1(x) -> float:
    x = abs(float(x))
    return 0.5 * x * x if x < 1.0 else x - 0.5


def hard_negative_mask(background_loss, positive, neg_pos_ratio=3.0) -> np.ndarray:
    """[B, P] -> [B, P] bool: per image, the min(floor(ratio * pos), P - pos) hardest negatives."""
    background_loss = np.asarray(background_loss, np.float64)
    positive = np.asarray(positive, bool)
    batch, num_priors = positive.shape
    mask = np.zeros((batch, num_priors), bool)
    for b in range(batch):
        num_pos = int(positive[b].sum())
        num_keep = min(math.floor(neg_pos_ratio * num_pos), num_priors - num_pos)
        negatives = [p for p in range(num_priors) if not positive[b, p]]
        # Descending loss; Python's sort is stable, so ties keep the lower index first.
        negatives.sort(key=lambda p, b=b: -background_loss[b, p])
        for p in negatives[:num_keep]:
            mask[b, p] = True
    return mask


def multibox_loss(
    pred_loc, logits, target_loc, target_labels, positive, neg_pos_ratio=3.0, alpha=1.0
) -> dict:
    """SSD's loss -> dict(total, localization, confidence, num_positives, num_negatives)."""
    pred_loc = np.asarray(pred_loc, np.float64)
    logits = np.asarray(logits, np.float64)
    target_loc = np.asarray(target_loc, np.float64)
    positive = np.asarray(positive, bool)
    batch, num_priors = positive.shape

    background = np.zeros((batch, num_priors))
    for b in range(batch):
        for p in range(num_priors):
            if not positive[b, p]:
                background[b, p] = cross_entropy(logits[b, p], 0)
    negative = hard_negative_mask(background, positive, neg_pos_ratio)

    loc, conf = 0.0, 0.0
    for b in range(batch):
        for p in range(num_priors):
            if positive[b, p]:
                loc += sum(smooth_l1(pred_loc[b, p, c] - target_loc[b, p, c]) for c in range(4))
                conf += cross_entropy(logits[b, p], target_labels[b, p])
            elif negative[b, p]:
                conf += cross_entropy(logits[b, p], 0)
    n = int(positive.sum())
    if n == 0:
        loc_n = conf_n = 0.0
    else:
        loc_n, conf_n = loc / n, conf / n
    return {
        "total": conf_n + alpha * loc_n,
        "localization": loc_n,
        "confidence": conf_n,
        "num_positives": n,
        "num_negatives": int(negative.sum()),
    }


# ----------------------------------------------------------------------------------------------
# Inference


def greedy_nms(boxes, valid, iou_threshold) -> np.ndarray:
    """Classic greedy NMS over boxes sorted best first -> keep mask [K] bool."""
    keep = np.zeros(len(boxes), bool)
    kept = []
    for j in range(len(boxes)):
        if not valid[j]:
            continue
        if all(iou(boxes[i], boxes[j]) <= iou_threshold for i in kept):
            keep[j] = True
            kept.append(j)
    return keep


def postprocess(boxes, scores, score_threshold, iou_threshold, pre_nms_top_k, max_detections):
    """SSD's post-processing of one image.

    boxes [P, 4] corner, scores [P, C]. Per class c >= 1: scores > threshold, the best
    ``pre_nms_top_k``, greedy NMS; then the best ``max_detections`` over all classes.
    Returns a list of (score, class, box) sorted by descending score.
    """
    boxes = np.asarray(boxes, np.float64)
    scores = np.asarray(scores, np.float64)
    num_priors, num_classes = scores.shape
    detections = []
    for c in range(1, num_classes):
        candidates = [p for p in range(num_priors) if scores[p, c] > score_threshold]
        candidates.sort(key=lambda p, c=c: -scores[p, c])
        candidates = candidates[:pre_nms_top_k]
        keep = greedy_nms([boxes[p] for p in candidates], [True] * len(candidates), iou_threshold)
        for p, k in zip(candidates, keep):
            if k:
                detections.append((float(scores[p, c]), c, boxes[p]))
    detections.sort(key=lambda d: -d[0])
    return detections[:max_detections]
