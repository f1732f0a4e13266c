"""The migration tables (docs/losses.md; README links them): each row computed
on both sides on one batch, asserting what the row says.

tensorflow-addons, TF Similarity and pytorch-metric-learning are not installed (tfa is
archived and pins old TensorFlow; the others pull TF Similarity's or PyTorch's stack), so
their losses are written out in numpy from their published source:

- tensorflow-addons ``triplet_semihard_loss`` / ``triplet_hard_loss`` and
  ``metric_learning.pairwise_distance`` / ``angular_distance``:
  https://github.com/tensorflow/addons/blob/f5d905dcc37d8cd0b0f66aece65c30847a9c477d/tensorflow_addons/losses/triplet.py
  https://github.com/tensorflow/addons/blob/0f70538aff223987d5c2dce596e3b70a2cc18613/tensorflow_addons/losses/metric_learning.py
- TF Similarity ``TripletLoss`` (defaults ``distance="cosine"``, soft margin) and its mining:
  https://github.com/tensorflow/similarity/blob/43f944324cb8ec3b225b7df6803537e7f2a20448/tensorflow_similarity/losses/triplet_loss.py
  https://github.com/tensorflow/similarity/blob/906d141b75acf00d0e1d37dd0d88c432bbb30f57/tensorflow_similarity/losses/utils.py
  https://github.com/tensorflow/similarity/blob/2821d07e7248c412384734b1592b94140754897d/tensorflow_similarity/algebra.py
- pytorch-metric-learning ``TripletMarginLoss`` (margin 0.05, ``AvgNonZeroReducer``,
  ``LpDistance`` of normalised embeddings) and ``BatchHardMiner``:
  https://github.com/KevinMusgrave/pytorch-metric-learning/blob/0a5db94bf7fed84122d7f53473e9a9db96493e64/src/pytorch_metric_learning/losses/triplet_margin_loss.py
"""

from __future__ import annotations

import numpy as np
import pytest

from tripletlab.keras_losses import TripletHardLoss, TripletSemiHardLoss
from tripletlab.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)

RTOL = 1e-5


def _batch(seed=0, unit=True, singleton=False):
    """4 classes x 4 images, D = 8 (plus one image of a fifth class: ``singleton``)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 4)
    if singleton:
        labels = np.append(labels, 4)
    e = rng.normal(size=(len(labels), 8))
    if unit:
        e /= np.linalg.norm(e, axis=1, keepdims=True)
    return labels, e.astype(np.float32)


def _ours(fn, labels, e, **kwargs):
    return float(fn(labels, e, **kwargs)[0])


def _keras(cls, labels, e, **kwargs):
    return float(cls(**kwargs)(labels, e))


# ----------------------------------------------------------------- tensorflow-addons


def tfa_distances(e, metric):
    e = e.astype(np.float64)
    if metric == "angular":  # 1 - cos of the normalised rows, at least 1e-16
        u = e / np.linalg.norm(e, axis=1, keepdims=True)
        return np.maximum(1 - u @ u.T, 1e-16)
    sq = np.maximum(((e[:, None] - e[None]) ** 2).sum(-1), 0)
    d = sq if metric == "squared-L2" else np.sqrt(sq)
    np.fill_diagonal(d, 0)
    return d


def tfa_semihard(labels, e, margin=1.0, metric="L2"):
    d = tfa_distances(e, metric)
    same = labels[:, None] == labels[None]
    pos = same & ~np.eye(len(labels), dtype=bool)
    total = 0.0
    for a, p in zip(*np.nonzero(pos), strict=True):
        negs = d[a][~same[a]]
        outside = negs[negs > d[a, p]]  # smallest D_an > D_ap, else the largest D_an
        n = outside.min() if len(outside) else negs.max()
        total += max(d[a, p] - n + margin, 0.0)
    return total / pos.sum()


def tfa_hard(labels, e, margin=1.0, soft=False, metric="L2"):
    d = tfa_distances(e, metric)
    same = labels[:, None] == labels[None]
    pos = same & ~np.eye(len(labels), dtype=bool)
    hardest_pos = np.where(pos.any(1), np.where(pos, d, -np.inf).max(1), d.min(1))  # none: 0
    hardest_neg = np.where(~same, d, np.inf).min(1)
    x = hardest_pos - hardest_neg
    return float(np.mean(np.log1p(np.exp(x)) if soft else np.maximum(x + margin, 0)))


def test_tfa_triplet_semihard_loss_class_is_equal():
    labels, e = _batch()
    assert _keras(TripletSemiHardLoss, labels, e) == pytest.approx(tfa_semihard(labels, e), RTOL)


def test_tfa_triplet_hard_loss_is_equal_when_every_anchor_has_a_positive():
    labels, e = _batch(1)
    for soft in (False, True):
        want = tfa_hard(labels, e, soft=soft)
        assert _keras(TripletHardLoss, labels, e, soft=soft) == pytest.approx(want, RTOL)
    # An anchor without a positive: tfa averages it in (positive distance 0), we leave it out.
    labels, e = _batch(1, singleton=True)
    ours = _keras(TripletHardLoss, labels, e)
    theirs = tfa_hard(labels, e)
    d = tfa_distances(e, "L2")
    lone = max(0 - d[-1, :-1].min() + 1.0, 0.0)
    assert theirs == pytest.approx((ours * (len(labels) - 1) + lone) / len(labels), RTOL)


def test_tfa_function_equals_ours_with_margin_1_not_with_the_defaults():
    labels, e = _batch(2)
    theirs = tfa_semihard(labels, e)  # margin=1.0
    assert _ours(semi_hard_triplet_loss, labels, e, margin=1.0) == pytest.approx(theirs, RTOL)
    assert _ours(semi_hard_triplet_loss, labels, e) != pytest.approx(theirs, 1e-3)  # 0.5


def test_tfa_angular_is_half_our_squared_l2_on_unit_vectors_with_twice_the_margin():
    labels, raw = _batch(3, unit=False)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    for m in (0.2, 0.5):
        theirs = tfa_semihard(labels, raw, margin=m, metric="angular")  # 1 - cos
        ours = _keras(TripletSemiHardLoss, labels, unit, margin=2 * m, distance_metric="squared-L2")
        assert ours == pytest.approx(2 * theirs, RTOL)
        same_margin = _keras(
            TripletSemiHardLoss, labels, unit, margin=m, distance_metric="squared-L2"
        )
        assert same_margin != pytest.approx(2 * theirs, 1e-3)


# ----------------------------------------------------------------- TF Similarity


def tfsim_triplet(labels, e, positive="hard", negative="semi-hard", soft_margin=True, margin=0.1):
    """TripletLoss with distance="cosine" (1 - u.v of unit vectors), reduced as Keras does
    (mean over anchors). Its masked_max / masked_min keep dims, so ``compute_loss`` gets
    [n, 1] and its soft margin, a log-sum-exp along axis 1 with a 1 added, is softplus per
    anchor. Semi-hard: the nearest negative farther than the hardest positive, else (its
    ``semi_hard_easy_mask``) the farthest negative."""
    u = e.astype(np.float64)
    d = 1 - u @ u.T
    same = labels[:, None] == labels[None]
    pos, neg = same & ~np.eye(len(labels), dtype=bool), ~same

    def masked_max(mask):
        lo = d.min(1, keepdims=True) - 1e-6
        return ((d - lo) * mask).max(1) + lo[:, 0]

    def masked_argmax(mask):
        return np.argmax((d - (d.min(1, keepdims=True) - 1e-6)) * mask, axis=1)

    def masked_min(mask):
        hi = d.max(1, keepdims=True) + 1e-6
        return ((d - hi) * mask).min(1) + hi[:, 0]

    p = masked_max(pos) if positive == "hard" else masked_min(pos)
    if negative == "hard":
        n = masked_min(neg)
    elif negative == "semi-hard":
        farthest = np.eye(len(labels), dtype=bool)[masked_argmax(neg)]
        n = masked_min(np.where(d > masked_max(pos)[:, None], neg, farthest))
    else:
        n = masked_max(neg)
    x = p - n
    if soft_margin:
        return float(np.mean(np.log1p(np.exp(x))))
    return float(np.mean(np.maximum(x + margin, 0)))


def test_tfsim_hard_hard_is_half_our_hard_loss_on_squared_l2_with_twice_the_margin():
    labels, e = _batch(4)
    theirs = tfsim_triplet(labels, e, negative="hard", soft_margin=False, margin=0.3)
    ours = _keras(TripletHardLoss, labels, e, margin=0.6, distance_metric="squared-L2")
    assert ours == pytest.approx(2 * theirs, RTOL)


def test_tfsim_semi_hard_is_not_ours():
    """TF Similarity takes one negative per anchor (beyond its hardest positive); we take
    one per (anchor, positive) pair."""
    labels, e = _batch(5)
    theirs = tfsim_triplet(labels, e, soft_margin=False, margin=0.3)
    ours = _keras(TripletSemiHardLoss, labels, e, margin=0.6, distance_metric="squared-L2")
    assert ours != pytest.approx(2 * theirs, 1e-2)


def test_tfsim_defaults_are_a_cosine_soft_margin_unlike_our_soft_hard_loss():
    labels, e = _batch(6)
    theirs = tfsim_triplet(labels, e)  # cosine, semi-hard, softplus: 1 - cos is half of 2 - 2 cos
    ours = _keras(TripletHardLoss, labels, e, soft=True, distance_metric="squared-L2")
    assert ours != pytest.approx(theirs, 1e-2) and ours != pytest.approx(2 * theirs, 1e-2)


# ----------------------------------------------------------------- pytorch-metric-learning


def _pml_distances(e):
    u = e.astype(np.float64) / np.linalg.norm(e, axis=1, keepdims=True)
    return np.sqrt(np.maximum(((u[:, None] - u[None]) ** 2).sum(-1), 0))


def pml_all_triplets(labels, e, margin=0.05):
    """TripletMarginLoss with no miner: every (a, p, n), AvgNonZeroReducer."""
    d = _pml_distances(e)
    same = labels[:, None] == labels[None]
    pos = same & ~np.eye(len(labels), dtype=bool)
    losses = np.maximum(d[:, :, None] - d[:, None, :] + margin, 0)[pos[:, :, None] & ~same[:, None]]
    return float(losses[losses > 0].mean()) if (losses > 0).any() else 0.0


def pml_batch_hard(labels, e, margin=0.05, reducer="avg_non_zero"):
    """BatchHardMiner (per anchor: farthest positive, nearest negative) + TripletMarginLoss."""
    d = _pml_distances(e)
    same = labels[:, None] == labels[None]
    pos = same & ~np.eye(len(labels), dtype=bool)
    x = np.where(pos, d, -np.inf).max(1) - np.where(~same, d, np.inf).min(1)
    losses = np.maximum(x + margin, 0)
    if reducer == "mean":
        return float(losses.mean())
    return float(losses[losses > 0].mean())


def test_pml_all_triplets_is_our_batch_all_on_normalised_embeddings():
    labels, e = _batch(7)
    for m in (0.05, 0.2):
        theirs = pml_all_triplets(labels, e, margin=m)
        assert _ours(batch_all_triplet_loss, labels, e, margin=m) == pytest.approx(theirs, RTOL)


def test_pml_batch_hard_averages_the_nonzero_anchors_and_mean_reducer_matches_ours():
    labels, e = _batch(8)
    centres = np.random.default_rng(9).normal(size=(4, 8))
    e = centres[labels] + 1.6 * e  # some anchors beyond the margin
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    m = 0.2
    ours = _ours(batch_hard_triplet_loss, labels, e, margin=m)
    assert ours == pytest.approx(pml_batch_hard(labels, e, m, reducer="mean"), RTOL)
    # The batch has anchors already beyond the margin: the default reducer leaves them out.
    d = _pml_distances(e)
    same = labels[:, None] == labels[None]
    pos = same & ~np.eye(len(labels), dtype=bool)
    x = np.where(pos, d, -np.inf).max(1) - np.where(~same, d, np.inf).min(1) + m
    assert 0 < (x > 0).sum() < len(labels)
    default = pml_batch_hard(labels, e, m)
    assert default == pytest.approx(ours * len(labels) / (x > 0).sum(), RTOL)


def pml_semihard_miner(labels, e, margin=0.05):
    """TripletMarginMiner(margin, type_of_triplets="semihard") + TripletMarginLoss(margin):
    every (a, p, n) with d_ap < d_an <= d_ap + margin, AvgNonZeroReducer."""
    d = _pml_distances(e)
    same = labels[:, None] == labels[None]
    pos = same & ~np.eye(len(labels), dtype=bool)
    gap = d[:, None, :] - d[:, :, None]  # [a, p, n]: d_an - d_ap
    keep = pos[:, :, None] & ~same[:, None] & (gap > 0) & (gap <= margin)
    losses = np.maximum(margin - gap, 0)[keep]
    return float(losses[losses > 0].mean()) if (losses > 0).any() else 0.0


def pml_easy_hard(labels, e, margin=0.05):
    """BatchEasyHardMiner(pos_strategy="easy", neg_strategy="hard") + TripletMarginLoss with
    reducer=MeanReducer(): per anchor the nearest positive and the nearest negative."""
    d = _pml_distances(e)
    same = labels[:, None] == labels[None]
    pos = same & ~np.eye(len(labels), dtype=bool)
    x = np.where(pos, d, np.inf).min(1) - np.where(~same, d, np.inf).min(1)
    return float(np.maximum(x + margin, 0).mean())


def test_pml_semihard_miner_keeps_every_semi_hard_triplet_unlike_ours():
    labels, e = _batch(10)
    for m in (0.2, 0.5):
        ours = _ours(semi_hard_triplet_loss, labels, e, margin=m)
        assert pml_semihard_miner(labels, e, m) != pytest.approx(ours, 1e-2)


def test_pml_easy_hard_miner_with_mean_reducer_is_our_easy_positive_with_hard_negatives():
    from tripletlab.losses import easy_positive_triplet_loss

    labels, e = _batch(11)
    ours = _ours(easy_positive_triplet_loss, labels, e, margin=0.2, negatives="hard")
    assert ours == pytest.approx(pml_easy_hard(labels, e, 0.2), RTOL)


def test_the_default_margins_the_tables_name():
    import inspect

    import tripletlab

    assert TripletSemiHardLoss().margin == TripletHardLoss().margin == 1.0  # as tfa
    for fn in (batch_all_triplet_loss, batch_hard_triplet_loss, semi_hard_triplet_loss):
        assert inspect.signature(fn).parameters["margin"].default == 0.5
    assert tripletlab.compose([]).mining.margin == 0.2  # a run


def test_the_functions_default_to_the_hinge_and_triplet_loss_passes_every_argument():
    """As README's code calls them: ``triplet_loss(..., strategy=..., margin=...)`` is the
    strategy's function with those arguments, and the functions default to the hinge."""
    from tripletlab.losses import triplet_loss

    labels, e = _batch(12)
    for fn, name in (
        (batch_all_triplet_loss, "batch_all"),
        (batch_hard_triplet_loss, "batch_hard"),
        (semi_hard_triplet_loss, "semi_hard"),
    ):
        hinge = _ours(fn, labels, e, soft_margin=False)
        assert _ours(fn, labels, e) == pytest.approx(hinge, RTOL)
        assert _ours(fn, labels, e, soft_margin=True) != pytest.approx(hinge, 1e-3)
        for kwargs in ({"margin": 0.3}, {"margin": 0.3, "squared": True}, {"soft_margin": True}):
            want = _ours(fn, labels, e, **kwargs)
            got = float(triplet_loss(labels, e, strategy=name, **kwargs)[0])
            assert got == pytest.approx(want, RTOL), (name, kwargs)
