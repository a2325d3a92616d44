"""The multibox loss: smooth L1 on positives, softmax cross-entropy with hard negative mining."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class MultiboxLoss(NamedTuple):
    """The loss and its parts, all scalars.

    total = (confidence + alpha * localization), each already divided by num_positives.
    """

    total: jax.Array
    localization: jax.Array
    confidence: jax.Array
    num_positives: jax.Array
    num_negatives: jax.Array


def hard_negative_mask(background_loss, positive, *, neg_pos_ratio: float = 3.0):
    """Selects the hardest negatives of each image, at most ``neg_pos_ratio`` per positive.

    Sort-and-mask: negatives are ranked by their background cross-entropy (descending; ties to
    the lower index), and those ranked below min(ratio * positives, negatives) are kept. An image
    without positives keeps none.

    Args:
      background_loss: [B, P] cross-entropy of each prior against class 0.
      positive: [B, P] bool.
    Returns:
      [B, P] bool mask of the mined negatives.
    """
    num_priors = positive.shape[-1]
    num_pos = jnp.sum(positive, axis=-1, keepdims=True)
    num_neg = jnp.minimum(jnp.floor(neg_pos_ratio * num_pos), num_priors - num_pos)
    key = jnp.where(positive, -jnp.inf, jax.lax.stop_gradient(background_loss))
    order = jnp.argsort(-key, axis=-1, stable=True)  # hardest first
    # rank[b, order[b, r]] = r: invert the permutation with a scatter instead of a second sort.
    ranks = jnp.broadcast_to(jnp.arange(num_priors), order.shape)
    rank = jnp.zeros_like(order).at[jnp.arange(order.shape[0])[:, None], order].set(ranks)
    return (rank < num_neg) & ~positive


def multibox_loss(
    pred_locations,
    pred_logits,
    target_locations,
    target_labels,
    positive,
    *,
    neg_pos_ratio: float = 3.0,
    alpha: float = 1.0,
) -> MultiboxLoss:
    """SSD's training loss (Liu et al. 2016, eq. 1-3), normalised by the batch's positives.

    L = (L_conf + alpha * L_loc) / N, N the number of positives in the batch; 0 when N = 0.
    L_loc is smooth L1 (beta 1) over the positives' four offsets; L_conf the softmax
    cross-entropy over positives and mined negatives (``hard_negative_mask``).

    Args:
      pred_locations: [B, P, 4] predicted offsets.
      pred_logits: [B, P, C] raw class scores, class 0 = background.
      target_locations: [B, P, 4] encoded matched boxes (``matching.match``).
      target_labels: [B, P] int class targets, 0 for background.
      positive: [B, P] bool.
    """
    pred_logits = pred_logits.astype(jnp.float32)
    pred_locations = pred_locations.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(pred_logits, axis=-1)
    # Negatives are scored against background whatever label they carry: that is the mining key
    # and their confidence loss; positives against their target class.
    background_loss = -log_probs[..., 0]
    positive_loss = -jnp.take_along_axis(log_probs, target_labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    negative = hard_negative_mask(background_loss, positive, neg_pos_ratio=neg_pos_ratio)

    smooth_l1 = optax.huber_loss(pred_locations, target_locations, delta=1.0)  # = smooth L1, beta 1
    loc_sum = jnp.sum(jnp.where(positive[..., None], smooth_l1, 0.0))
    conf_sum = jnp.sum(jnp.where(positive, positive_loss, 0.0)) + jnp.sum(jnp.where(negative, background_loss, 0.0))

    num_pos = jnp.sum(positive)
    denominator = jnp.maximum(num_pos, 1).astype(jnp.float32)
    localization = loc_sum / denominator
    confidence = conf_sum / denominator
    return MultiboxLoss(
        total=confidence + alpha * localization,
        localization=localization,
        confidence=confidence,
        num_positives=num_pos,
        num_negatives=jnp.sum(negative),
    )
