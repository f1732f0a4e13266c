"""The textbook dense forms that ``bench losses`` times beside ours: the [B, B, B] triplet
tensor of omoindrot/tensorflow-triplet-loss (batch-all) and the [B*B, B] tiling of
tf-addons' ``triplet_semihard_loss`` (semi-hard), op for op, counting exactly the triplets
ours count. Also the gradient references of tests/losses/test_engines.py."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tripletlab import losses
from tripletlab.losses.distances import prepare
from tripletlab.losses.pieces import items, masks, ratio

DENSE_BYTES_PER_TRIPLET = 12  # three float32 [B, B, B] tensors alive at once


def _dense_setup(labels, embeddings, squared):
    labels, embeddings = prepare(labels, embeddings)
    d = losses.pairwise_distances(embeddings, squared)
    pos, neg = masks(labels, tf.shape(labels)[0])
    return d, pos, neg


def _mean_of_items(x, valid, margin, soft_margin):
    """x = d_ap - d_an per item, valid bool, same shape -> (loss, fraction) over valid items."""
    values, _, active = items(x, margin, soft_margin)
    n = tf.reduce_sum(tf.cast(valid, tf.int64))
    total = tf.reduce_sum(tf.where(valid, values, tf.zeros_like(values)))
    n_active = tf.reduce_sum(tf.cast(tf.logical_and(valid, active), tf.int64))
    return ratio(total, n, x.dtype), ratio(n_active, n, x.dtype)


def _triplet_mask(labels):
    """omoindrot's ``_get_triplet_mask``: [B, B, B] bool, True for valid (a, p, n)."""
    not_equal = tf.logical_not(tf.cast(tf.eye(tf.shape(labels)[0]), tf.bool))
    distinct = tf.logical_and(
        tf.logical_and(not_equal[:, :, None], not_equal[:, None, :]), not_equal[None, :, :]
    )
    label_equal = tf.equal(labels[None, :], labels[:, None])
    valid_labels = tf.logical_and(label_equal[:, :, None], tf.logical_not(label_equal[:, None, :]))
    return tf.logical_and(distinct, valid_labels)


def _dense_batch_all(labels, embeddings, margin=0.5, squared=False, soft_margin=False):
    """Batch-all over the [B, B, B] tensor of every triplet, as omoindrot's
    ``batch_all_triplet_loss``: the 3-D validity mask as floats multiplied in, relu, then the
    positive triplets counted with a second 3-D comparison.

    labels [B], embeddings [B, D] -> (loss [], fraction []), same definition as
    :func:`tripletlab.losses.batch_all_triplet_loss`: counts ``> 0`` rather than the
    original's ``> 1e-16``, and divides safely instead of adding 1e-16, so both are exact.
    """
    labels, embeddings = prepare(labels, embeddings)
    d = losses.pairwise_distances(embeddings, squared)
    dtype = d.dtype
    mask = tf.cast(_triplet_mask(labels), dtype)  # [B, B, B]
    num_valid = tf.reduce_sum(mask)
    x = d[:, :, None] - d[:, None, :]  # [B, B, B]: d(a, p) - d(a, n)
    if soft_margin:
        total = tf.reduce_sum(mask * tf.nn.softplus(x))
        num_active = tf.reduce_sum(mask * tf.cast(x > 0, dtype))
        return ratio(total, num_valid, dtype), ratio(num_active, num_valid, dtype)
    triplet_loss = tf.maximum(mask * (x + tf.cast(margin, dtype)), 0.0)
    num_positive = tf.reduce_sum(tf.cast(triplet_loss > 0, dtype))
    total = tf.reduce_sum(triplet_loss)
    return ratio(total, num_positive, dtype), ratio(num_positive, num_valid, dtype)


def _dense_batch_hard(labels, embeddings, margin=0.5, squared=False, soft_margin=False):
    """Batch-hard as a max over each anchor's [B, B] slice of the triplet tensor.

    max over valid (p, n) of d(a, p) - d(a, n) is the farthest positive minus the nearest
    negative; a B^3 formulation independent of the masked max / min of ours.
    """
    d, pos, neg = _dense_setup(labels, embeddings, squared)
    x = d[:, :, None] - d[:, None, :]
    valid3 = tf.logical_and(pos[:, :, None], neg[:, None, :])
    hardest = tf.reduce_max(
        tf.where(valid3, x, tf.fill(tf.shape(x), tf.constant(-np.inf, x.dtype))), axis=[1, 2]
    )
    valid = tf.reduce_any(valid3, axis=[1, 2])
    hardest = tf.where(valid, hardest, tf.zeros_like(hardest))
    return _mean_of_items(hardest, valid, margin, soft_margin)


def _masked_minimum(data, mask):
    """tf-addons: the minimum of data [N, M] over mask [N, M] (float 0/1) per row, [N, 1]."""
    axis_maximums = tf.reduce_max(data, axis=1, keepdims=True)
    return tf.reduce_min((data - axis_maximums) * mask, axis=1, keepdims=True) + axis_maximums


def _masked_maximum(data, mask):
    """tf-addons: the maximum of data [N, M] over mask [N, M] (float 0/1) per row, [N, 1]."""
    axis_minimums = tf.reduce_min(data, axis=1, keepdims=True)
    return tf.reduce_max((data - axis_minimums) * mask, axis=1, keepdims=True) + axis_minimums


def _dense_semi_hard(labels, embeddings, margin=0.5, squared=False, soft_margin=False):
    """Semi-hard as tf-addons' ``triplet_semihard_loss``: the distances tiled to [B*B, B].

    Row i*B + a of the tile holds anchor a's distances, compared with d(a, i) where i plays
    the positive; masked minimum / maximum by arithmetic on float masks, as there. One
    change, to match :func:`tripletlab.losses.semi_hard_triplet_loss`: pairs whose anchor has
    no negative are left out of the mean (tf-addons averages them in with a meaningless
    "negative").
    """
    d, pos, neg = _dense_setup(labels, embeddings, squared)
    dtype = d.dtype
    b = tf.shape(d)[0]
    pdist_tile = tf.tile(d, [b, 1])  # [B*B, B]
    mask = tf.logical_and(
        tf.tile(neg, [b, 1]), pdist_tile > tf.reshape(tf.transpose(d), [-1, 1])
    )  # [B*B, B]: negatives of a farther than d(a, i)
    mask_final = tf.reduce_sum(tf.cast(mask, dtype), axis=1, keepdims=True) > 0
    mask_final = tf.transpose(tf.reshape(mask_final, [b, b]))
    negatives_outside = _masked_minimum(pdist_tile, tf.cast(mask, dtype))
    negatives_outside = tf.transpose(tf.reshape(negatives_outside, [b, b]))
    negatives_inside = tf.tile(_masked_maximum(d, tf.cast(neg, dtype)), [1, b])
    semi_hard_negatives = tf.where(mask_final, negatives_outside, negatives_inside)
    valid = tf.logical_and(pos, tf.reduce_any(neg, axis=1)[:, None])
    return _mean_of_items(d - semi_hard_negatives, valid, margin, soft_margin)


DENSE = {
    "batch_all": _dense_batch_all,
    "batch_hard": _dense_batch_hard,
    "semi_hard": _dense_semi_hard,
}
# Only these have a textbook dense form worth comparing; batch-hard is O(B^2) everywhere.
DENSE_BENCHMARKED = ("batch_all", "semi_hard")
