"""Fixed-size, per-class, batched non-maximum suppression.

``batched_nms`` is SSD's post-processing: per class, the best ``pre_nms_top_k`` boxes above a
score threshold, greedy NMS, then the best ``max_detections`` of all classes. Its result is
exactly that of this exhaustive procedure, but it usually looks at far fewer boxes: the output
holds at most ``max_detections`` boxes, so most classes' lower candidates cannot reach it.

1. Shallow: suppress only each class's best ``SHALLOW_DEPTH`` candidates and take the best of
   all classes. A class whose first left-out candidate scores below the ``max_detections``-th
   kept score cannot add anything (kept scores only rise as more candidates are looked at), so
   when no class is in doubt this is the exact answer.
2. Deep: the classes in doubt (at most ``DEEP_ROWS`` per image) get their full candidate list.
3. Exhaustive: every class's full list, when more classes are in doubt.

Each stage has fixed shapes; ``lax.switch`` runs the first one that the scores allow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ssd_jax import boxes as box_lib

# Candidates per class in the shallow stage: enough that few classes of an image remain in doubt
# even with scores spread over every class (a random-weight SSD300: benchmarks/RESULTS.md).
SHALLOW_DEPTH = 64
# Classes per image that the deep stage takes before the exhaustive one is needed.
DEEP_ROWS = 8
# Rows longer than this many times k are first narrowed to the groups of their k best scores
# (``top_candidates``): on a GPU every top_k with k > 16 is a sort of the whole row, and XLA's
# one-pass kernel for k <= 16 is no faster than that sort.
NARROW_FROM = 16
_WORD = 32  # suppression bits per uint32 word
# Words of boxes that greedy_nms_mask decides in one block (fused kernel): two halve the kernels a
# GPU runs in a row against one, while the compile time grows with the block (unrolled lanes).
BLOCK_WORDS = 2


class PostprocessOptions(NamedTuple):
    """SSD's post-processing options, with the reference SSD's values: the one home of detect's,
    batched_nms's and the evaluator's defaults."""

    score_threshold: float = 0.01
    iou_threshold: float = 0.45
    pre_nms_top_k: int = 400
    max_detections: int = 200


DEFAULTS = PostprocessOptions()


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


# ----------------------------------------------------------------------------- greedy NMS
def suppression_bits(boxes, *, iou_threshold: float):
    """Which earlier boxes suppress each box, packed: [..., K, 4] -> uint32 [..., K, ceil(K / 32)].

    Bit ``i % 32`` of word ``i // 32`` in row j is set iff i < j and IoU(i, j) > ``iou_threshold``.
    The overlaps are computed in the packed layout [..., K, W, 32], so that XLA fuses them into
    the reduction that packs them and never writes the [K, K] matrix.
    """
    k = boxes.shape[-2]
    words = -(-k // _WORD)
    earlier = _pad_axis(boxes, -2, words * _WORD).reshape(*boxes.shape[:-2], 1, words, _WORD, 4)
    later = boxes[..., :, None, None, :]  # [..., K, 1, 1, 4]
    intersection = box_lib.intersection(earlier, later)  # [..., K, W, 32]
    # XLA:GPU gives a product that two expressions read (the union and the quotient) a kernel of its own, which
    # writes every one of the [..., K, W, 32] products to memory (0.66 of the 1.9 ms of post-processing at batch
    # 64). The union takes its own copy, computed from the boxes passed through a barrier so that XLA cannot merge
    # the two: each product then has one reader, and the whole test fuses into the packing reduction. Same bits.
    earlier_copy, later_copy = lax.optimization_barrier((earlier, later))
    union = box_lib.area(earlier) + box_lib.area(later) - box_lib.intersection(earlier_copy, later_copy)
    # As box_lib.pairwise_iou computes it: an empty union (two empty boxes) is IoU 0.
    overlaps = jnp.where(union > 0, intersection / jnp.where(union > 0, union, 1.0), 0.0) > iou_threshold
    order = (jnp.arange(words)[:, None] * _WORD + jnp.arange(_WORD)) < jnp.arange(k)[:, None, None]
    lanes = jnp.left_shift(jnp.uint32(1), jnp.arange(_WORD, dtype=jnp.uint32))
    packed = jnp.where(overlaps & order, lanes, jnp.uint32(0))
    return lax.reduce(packed, jnp.uint32(0), lax.bitwise_or, (packed.ndim - 1,))


def greedy_nms_mask(boxes, valid, *, iou_threshold: float, blocks_in_a_loop: bool | None = None):
    """Greedy NMS over boxes already sorted best first -> keep mask [..., K].

    Box j is kept iff it is valid and no kept box before it overlaps it with IoU >
    ``iou_threshold``. Boxes are decided ``32 * BLOCK_WORDS`` at a time, one block after the
    other: a box is out if a kept box of an earlier block suppresses it (ANDs of packed words),
    and within the block the decisions follow one another. Each block is elementwise bit
    operations that XLA fuses into two kernels. The steps depend on K alone, never on the data.

    ``blocks_in_a_loop`` (default: on a CPU) runs the blocks as the iterations of one loop, whose
    body XLA compiles once; otherwise they follow one another unrolled, as a GPU runs them fastest
    (a loop's counter, condition and slicing cost as many kernels again there) but at a compile
    time that grows with K. The same bits either way.

    Args:
      boxes: [..., K, 4] corner boxes sorted by descending score.
      valid: [..., K] bool, candidates that passed the score threshold.
    """
    if blocks_in_a_loop is None:
        blocks_in_a_loop = jax.default_backend() == "cpu"
    k = boxes.shape[-2]
    bits = suppression_bits(boxes, iou_threshold=iou_threshold)  # [..., K, W]
    kept_words = (_kept_words_in_a_loop if blocks_in_a_loop else _kept_words_unrolled)(bits, valid)
    position = jnp.arange(k, dtype=jnp.uint32)
    return (jnp.right_shift(kept_words[..., position // _WORD], position % _WORD) & 1) == 1


def _decide_block(block_bits, free, block_words: int):
    """The kept boxes of one block: [..., L, n] suppression bits of its L = 32 n lanes by the block's
    own n words, [..., L] not suppressed by an earlier block -> n kept words [...] uint32."""
    block_kept = [jnp.zeros(free.shape[:-1], jnp.uint32) for _ in range(block_words)]
    for lane in range(block_words * _WORD):
        keep = free[..., lane]
        for word in range(lane // _WORD + 1):
            keep = keep & ((block_bits[..., lane, word] & block_kept[word]) == 0)
        block_kept[lane // _WORD] = block_kept[lane // _WORD] | jnp.left_shift(
            keep.astype(jnp.uint32), jnp.uint32(lane % _WORD))
    return block_kept


def _kept_words_unrolled(bits, valid):
    """Kept words [..., W] from suppression bits [..., K, W], the blocks unrolled one after another."""
    words = bits.shape[-1]
    bits = _pad_axis(bits, -2, words * _WORD)
    valid = _pad_axis(valid, -1, words * _WORD)
    kept_words = []  # [...] uint32 per word: bit i of word w set iff box 32 * w + i is kept
    for first in range(0, words, BLOCK_WORDS):
        count = min(BLOCK_WORDS, words - first)
        rows = slice(first * _WORD, (first + count) * _WORD)
        block_bits = bits[..., rows, :]  # [..., 32 n, W]
        free = valid[..., rows]  # [..., 32 n]: not suppressed by a kept box of an earlier block
        for earlier, kept in enumerate(kept_words):
            free = free & ((block_bits[..., earlier] & kept[..., None]) == 0)
        kept_words += _decide_block(block_bits[..., first:first + count], free, count)
    return jnp.stack(kept_words, axis=-1)


def _kept_words_in_a_loop(bits, valid):
    """Kept words [..., W] from suppression bits [..., K, W], one loop iteration per block: the
    words of later blocks are still zero when a block reads all of them."""
    words = bits.shape[-1]
    padded_words = -(-words // BLOCK_WORDS) * BLOCK_WORDS
    lanes = BLOCK_WORDS * _WORD
    bits = _pad_axis(_pad_axis(bits, -1, padded_words), -2, padded_words * _WORD)
    valid = _pad_axis(valid, -1, padded_words * _WORD)
    batch_axes = bits.ndim - 2

    def block(index, kept):
        first_row = index * lanes
        block_bits = lax.dynamic_slice_in_dim(bits, first_row, lanes, axis=batch_axes)  # [..., L, W]
        free = lax.dynamic_slice_in_dim(valid, first_row, lanes, axis=batch_axes)  # [..., L]
        free = free & jnp.all((block_bits & kept[..., None, :]) == 0, axis=-1)
        own = lax.dynamic_slice_in_dim(block_bits, index * BLOCK_WORDS, BLOCK_WORDS, axis=batch_axes + 1)
        decided = jnp.stack(_decide_block(own, free, BLOCK_WORDS), axis=-1)  # [..., n]
        return lax.dynamic_update_slice_in_dim(kept, decided, index * BLOCK_WORDS, axis=batch_axes)

    kept = jnp.zeros((*valid.shape[:-1], padded_words), jnp.uint32)
    return lax.fori_loop(0, padded_words // BLOCK_WORDS, block, kept)[..., :words]


def _pad_axis(x, axis: int, size: int):
    """Zero-pads ``axis`` of x up to ``size``."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


# ----------------------------------------------------------------------------- SSD post-processing
def top_candidates(class_scores, k: int, *, narrow: bool | None = None):
    """The k best scores of each row of [..., N], best first, equal scores lower index first ->
    (scores [..., k], indices [..., k] int32).

    ``narrow`` (default: off the CPU, for k > 16 and rows longer than ``NARROW_FROM * k``) first
    splits each row into groups of G and keeps the k groups with the best maxima: they hold the
    k best scores (a group left out has k better groups, so k better scores). Two top_k's over
    N / G group maxima and k * G scores are far less sorting than one over N; the scores are
    gathered in their original order, so top_k breaks ties by the original index. The result is
    the same.
    """
    n = class_scores.shape[-1]
    if narrow is None:
        narrow = jax.default_backend() != "cpu" and 16 < k and NARROW_FROM * k <= n
    if not narrow:
        scores, index = lax.top_k(class_scores, k)
        # Equal scores in one order whatever top_k's kernel did (XLA:GPU's for k <= 16 may differ).
        negated, index = lax.sort((-scores, index.astype(jnp.int32)), dimension=-1, num_keys=2)
        return -negated, index
    group = 1 << max(0, round(math.log2(math.sqrt(n / k))))  # about sqrt(N / k): the least to sort
    groups = -(-n // group)
    padded = jnp.pad(class_scores, [(0, 0)] * (class_scores.ndim - 1) + [(0, groups * group - n)],
                     constant_values=-jnp.inf).reshape(*class_scores.shape[:-1], groups, group)
    best_groups = jnp.sort(lax.top_k(jnp.max(padded, axis=-1), k)[1], axis=-1)  # [..., k], in row order
    gathered = jnp.take_along_axis(padded, best_groups[..., None], axis=-2).reshape(*best_groups.shape[:-1], -1)
    scores, position = lax.top_k(gathered, k)
    index = jnp.take_along_axis(best_groups, position // group, axis=-1) * group + position % group
    return scores, index.astype(jnp.int32)


def _class_candidates(class_scores, boxes, depth: int, *, score_threshold: float, iou_threshold: float):
    """The best ``depth`` candidates of each (image, class) row, suppressed.

    Args:
      class_scores: [B, R, P] scores of R classes, -1 at or below the threshold.
      boxes: [B, P, 4], shared by the classes.
    Returns:
      kept scores [B, R, depth] (-1 where suppressed or not a candidate), their boxes
      [B, R, depth, 4], the best score left out of each row [B, R] (-1 if none) and the
      lowest score taken [B, R].
    """
    top_scores, top_index = top_candidates(class_scores, min(depth + 1, class_scores.shape[-1]))
    left_out = top_scores[..., depth] if top_scores.shape[-1] > depth else jnp.full(top_scores.shape[:-1], -1.0)
    top_scores, top_index = top_scores[..., :depth], top_index[..., :depth]
    candidates = jnp.take_along_axis(boxes[:, None, :, :], top_index[..., None], axis=2)
    keep = greedy_nms_mask(candidates, top_scores > score_threshold, iou_threshold=iou_threshold)
    return jnp.where(keep, top_scores, -1.0), candidates, left_out, top_scores[..., -1]


def _best_detections(scores, classes, tie_order, boxes, *, max_detections: int, score_threshold: float):
    """The ``max_detections`` best of [B, N] kept candidates per image (ties: lower ``tie_order``
    first), padded -> ``Detections``."""
    n = scores.shape[-1]
    position = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), scores.shape)
    _, _, ranked = lax.sort((-scores, tie_order, position), dimension=-1, num_keys=2)
    best = ranked[..., :max_detections]
    best_scores = jnp.take_along_axis(scores, best, axis=-1)
    found = best_scores > score_threshold
    detections = Detections(
        boxes=jnp.where(found[..., None], jnp.take_along_axis(boxes, best[..., None], axis=1), 0.0),
        scores=jnp.where(found, best_scores, 0.0),
        classes=jnp.where(found, jnp.take_along_axis(classes, best, axis=-1), 0).astype(jnp.int32),
        num_detections=jnp.sum(found, axis=-1).astype(jnp.int32),
    )
    pad = max_detections - best.shape[-1]  # fewer candidates than requested detections
    if pad:
        detections = detections._replace(
            boxes=jnp.pad(detections.boxes, ((0, 0), (0, pad), (0, 0))),
            scores=jnp.pad(detections.scores, ((0, 0), (0, pad))),
            classes=jnp.pad(detections.classes, ((0, 0), (0, pad))),
        )
    return detections


def _flatten_rows(kept, candidates, row_classes, top_k: int):
    """[B, R, D] rows of classes ``row_classes`` [B, R] (1..C-1) -> flat (scores, classes, tie
    order, boxes) [B, R * D]; the tie order is (class, rank in the class) as in the exhaustive list."""
    batch, rows, depth = kept.shape
    classes = jnp.broadcast_to(row_classes[..., None], kept.shape)
    tie_order = (classes - 1) * top_k + jnp.arange(depth)
    return (kept.reshape(batch, -1), classes.reshape(batch, -1), tie_order.reshape(batch, -1),
            candidates.reshape(batch, rows * depth, 4))


def batched_nms(
    boxes,
    scores,
    *,
    score_threshold: float = DEFAULTS.score_threshold,
    iou_threshold: float = DEFAULTS.iou_threshold,
    pre_nms_top_k: int = DEFAULTS.pre_nms_top_k,
    max_detections: int = DEFAULTS.max_detections,
) -> Detections:
    """SSD's post-processing: per-class NMS, then the best detections across classes.

    For each image and each class c >= 1: keep scores > ``score_threshold``, take the best
    ``pre_nms_top_k``, suppress boxes with IoU > ``iou_threshold`` with a better kept box; then
    keep the best ``max_detections`` of all classes (equal scores: lower class, then better rank
    first). Shapes are static: the result is padded. See the module docstring for how the work
    is kept small.

    Args:
      boxes: [B, P, 4] decoded corner boxes, shared by all classes.
      scores: [B, P, C] class probabilities, class 0 = background (ignored).
    Returns:
      ``Detections`` with K = ``max_detections``.
    """
    return nms_stages(boxes, scores, score_threshold=score_threshold, iou_threshold=iou_threshold,
                      pre_nms_top_k=pre_nms_top_k, max_detections=max_detections)[0]


def nms_stages(boxes, scores, *, score_threshold: float = DEFAULTS.score_threshold,
               iou_threshold: float = DEFAULTS.iou_threshold, pre_nms_top_k: int = DEFAULTS.pre_nms_top_k,
               max_detections: int = DEFAULTS.max_detections, shallow_depth: int = SHALLOW_DEPTH,
               deep_rows: int = DEEP_ROWS):
    """``batched_nms`` -> (Detections, the stage that ran: int32 [] 0 shallow, 1 deep, 2 exhaustive)."""
    batch, num_priors, num_classes = scores.shape
    top_k = min(pre_nms_top_k, num_priors)
    class_scores = jnp.swapaxes(scores[..., 1:], 1, 2).astype(jnp.float32)  # [B, C-1, P]
    class_scores = jnp.where(class_scores > score_threshold, class_scores, -1.0)
    all_classes = jnp.broadcast_to(jnp.arange(1, num_classes), (batch, num_classes - 1))
    options = {"score_threshold": score_threshold, "iou_threshold": iou_threshold}
    finish = {"max_detections": max_detections, "score_threshold": score_threshold}

    def exhaustive():
        kept, candidates, _, _ = _class_candidates(class_scores, boxes, top_k, **options)
        return _best_detections(*_flatten_rows(kept, candidates, all_classes, top_k), **finish)

    depth = min(shallow_depth, top_k)
    if depth == top_k:  # the shallow stage would already be the exhaustive one
        return exhaustive(), jnp.int32(2)

    kept, candidates, left_out, lowest_taken = _class_candidates(class_scores, boxes, depth, **options)
    shallow = _flatten_rows(kept, candidates, all_classes, top_k)
    kept_flat = shallow[0]
    if kept_flat.shape[-1] >= max_detections:  # the max_detections-th kept score; -1 if fewer were kept
        bar = lax.top_k(kept_flat, max_detections)[0][..., -1]
    else:
        bar = jnp.full((batch,), -1.0)
    # A class is in doubt if a left-out candidate could still enter the output, or if the cut
    # after ``depth`` falls between equal scores (top_k may have chosen either).
    truncated = left_out > score_threshold
    in_doubt = truncated & ((left_out >= bar[:, None]) | (lowest_taken == left_out))  # [B, C-1]
    doubts = jnp.max(jnp.sum(in_doubt, axis=-1))
    stage = jnp.where(doubts == 0, 0, jnp.where(doubts <= deep_rows, 1, 2)).astype(jnp.int32)

    def shallow_only():
        return _best_detections(*shallow, **finish)

    def deep():
        rows = min(deep_rows, num_classes - 1)
        row_index = jnp.argsort(~in_doubt, axis=-1, stable=True)[..., :rows]  # [B, rows]: doubtful classes
        row_used = jnp.take_along_axis(in_doubt, row_index, axis=-1)
        row_scores = jnp.take_along_axis(class_scores, row_index[..., None], axis=1)  # [B, rows, P]
        deep_kept, deep_candidates, _, _ = _class_candidates(row_scores, boxes, top_k, **options)
        deep_kept = jnp.where(row_used[..., None], deep_kept, -1.0)
        shallow_kept = jnp.where(in_doubt[..., None], -1.0, kept)  # replaced by the full lists
        parts = [_flatten_rows(shallow_kept, candidates, all_classes, top_k),
                 _flatten_rows(deep_kept, deep_candidates, row_index + 1, top_k)]
        scores_, classes_, order_, boxes_ = (jnp.concatenate(part, axis=1) for part in zip(*parts))
        return _best_detections(scores_, classes_, order_, boxes_, **finish)

    return lax.switch(stage, [shallow_only, deep, exhaustive]), stage


# ----------------------------------------------------------------------------- for exported models
def portable_greedy_nms_mask(boxes, valid, *, iou_threshold: float):
    """``greedy_nms_mask`` from bool matrices and one while loop: iterates ``keep = valid & ~any(kept
    earlier overlapping box)`` to its fixed point (after t rounds the first t boxes are final).
    Slower than the packed version, but made of ops that TFLite and ONNX runtimes all have."""
    k = boxes.shape[-2]
    earlier = jnp.arange(k)[:, None] < jnp.arange(k)[None, :]  # [K, K]: i before j
    suppresses = (box_lib.pairwise_iou(boxes, boxes) > iou_threshold) & earlier

    def step(state):
        keep, _ = state
        new_keep = valid & ~jnp.any(suppresses & keep[..., :, None], axis=-2)
        return new_keep, jnp.any(new_keep != keep)

    return lax.while_loop(lambda state: state[1], step, (valid, jnp.array(True)))[0]


def portable_batched_nms(boxes, scores, *, score_threshold: float = DEFAULTS.score_threshold,
                         iou_threshold: float = DEFAULTS.iou_threshold, pre_nms_top_k: int = DEFAULTS.pre_nms_top_k,
                         max_detections: int = DEFAULTS.max_detections) -> Detections:
    """``batched_nms`` for exported models (``ssd_jax.export``): the exhaustive procedure with
    ``top_k`` and ``portable_greedy_nms_mask`` alone, no sort, switch or bit operations, which
    TFLite and ONNX converters do not all take. The same detections but where scores are exactly
    equal (the order of ties is then the runtime's)."""
    batch, num_priors, _ = scores.shape
    top_k = min(pre_nms_top_k, num_priors)
    class_scores = jnp.swapaxes(scores[..., 1:], 1, 2).astype(jnp.float32)  # [B, C-1, P]
    class_scores = jnp.where(class_scores > score_threshold, class_scores, -1.0)
    top_scores, top_index = lax.top_k(class_scores, top_k)  # [B, C-1, k], best first
    candidates = jnp.take_along_axis(boxes[:, None, :, :], top_index[..., None], axis=2)  # [B, C-1, k, 4]
    keep = portable_greedy_nms_mask(candidates, top_scores > score_threshold, iou_threshold=iou_threshold)
    kept = jnp.where(keep, top_scores, -1.0).reshape(batch, -1)  # [B, (C-1) k]
    num_out = min(max_detections, kept.shape[1])
    best_scores, best = lax.top_k(kept, num_out)
    found = best_scores > score_threshold
    out_boxes = jnp.take_along_axis(candidates.reshape(batch, -1, 4), best[..., None], axis=1)
    pad = max_detections - num_out
    detections = Detections(
        boxes=jnp.pad(jnp.where(found[..., None], out_boxes, 0.0), ((0, 0), (0, pad), (0, 0))),
        scores=jnp.pad(jnp.where(found, best_scores, 0.0), ((0, 0), (0, pad))),
        classes=jnp.pad(jnp.where(found, (best // top_k + 1).astype(jnp.int32), 0), ((0, 0), (0, pad))),
        num_detections=jnp.sum(found, axis=-1).astype(jnp.int32))
    return detections
