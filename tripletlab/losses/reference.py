"""The brute force: every strategy straight from its definition, one triplet at a time, in
numpy float64. The tests check every engine against it, and ``python -m tripletlab.bench
losses`` checks its small cases. O(B N^2) time: for batches of tens, not thousands.

``memory``: None, or (labels [M], embeddings [M, D]) appended to the columns: anchors are
the batch's B rows; positives and negatives are any other column (batch or memory) with the
same or another label. Where a definition picks one element among equals (the farthest
positive, the nearest negative, ...), it takes the lowest column, as argmin / argmax do.
"""

from __future__ import annotations

import math

import numpy as np


def _columns(labels, embeddings, memory):
    y = np.asarray(labels).reshape(-1)
    e = np.asarray(embeddings, dtype=np.float64)
    cy, ce = y, e
    if memory is not None:
        cy = np.concatenate([y, np.asarray(memory[0]).reshape(-1)])
        ce = np.concatenate([e, np.asarray(memory[1], dtype=np.float64)])
    return y, e, cy, ce


def distances(labels, embeddings, squared=False, memory=None) -> np.ndarray:
    """[B, N] distances from the batch to the batch and the memory, float64."""
    _, e, _, ce = _columns(labels, embeddings, memory)
    d2 = ((e[:, None, :] - ce[None, :, :]) ** 2).sum(-1)
    return d2 if squared else np.sqrt(d2)


def _candidates(y, cy, a):
    """Column indices of a's positives and negatives."""
    positives = [p for p in range(len(cy)) if p != a and cy[p] == y[a]]
    negatives = [n for n in range(len(cy)) if cy[n] != y[a]]
    return positives, negatives


def _semi_hard_negative(row, p, negatives):
    """The nearest negative strictly farther than p, else the farthest one."""
    farther = [n for n in negatives if row[n] > row[p]]
    if farther:
        return min(farther, key=lambda n: (row[n], n))
    return max(negatives, key=lambda n: (row[n], -n))


def batch_all_triplets(d, y, cy):
    """Batch-all: every valid (a, p, n)."""
    return list(_all_triplets(y, cy))


def batch_hard_picks(d, y, cy):
    """Batch-hard: per anchor, its farthest positive and nearest negative."""
    out = []
    for a in range(len(y)):
        pos, neg = _candidates(y, cy, a)
        if pos and neg:
            p = max(pos, key=lambda p: (d[a, p], -p))
            out.append((a, p, min(neg, key=lambda n: (d[a, n], n))))
    return out


def semi_hard_picks(d, y, cy):
    """Semi-hard: per positive pair, the nearest negative farther than p, else the farthest."""
    out = []
    for a in range(len(y)):
        pos, neg = _candidates(y, cy, a)
        if pos and neg:
            out.extend((a, p, _semi_hard_negative(d[a], p, neg)) for p in pos)
    return out


def easy_positive_picks(d, y, cy, negatives="semi_hard"):
    """Easy-positive: per anchor, its nearest positive p, with the semi-hard negative of p
    (``negatives="semi_hard"``) or the nearest negative (``"hard"``)."""
    out = []
    for a in range(len(y)):
        pos, neg = _candidates(y, cy, a)
        if pos and neg:
            row = d[a]
            p = min(pos, key=lambda p: (d[a, p], p))
            hard = min(neg, key=lambda n: (row[n], n))
            out.append(
                (a, p, _semi_hard_negative(row, p, neg) if negatives == "semi_hard" else hard)
            )
    return out


def picks(labels, embeddings, strategy, squared=False, memory=None, **own):
    """The (anchor, positive, negative) triplets ``strategy`` counts, from its entry's
    brute force (:class:`tripletlab.registry.Strategy`'s ``reference``; ``own``: its own
    keys, e.g. ``negatives``). Ties: lowest column."""
    from tripletlab.registry import STRATEGIES, load_target

    entry = STRATEGIES.option(strategy)
    if entry.reference is None:
        raise ValueError(f"{strategy!r} has no brute force: pass the triplets it drew")
    y, _, cy, _ = _columns(labels, embeddings, memory)
    d = distances(labels, embeddings, squared, memory)
    function = load_target(entry.reference, f"the brute force of mining={strategy}")
    return [tuple(map(int, t)) for t in function(d, y, cy, **own)]


def _averages_active(strategy):
    from tripletlab.registry import STRATEGIES

    return STRATEGIES.option(strategy).averages_active


def _item(x, margin, soft_margin):
    """x = d(a, p) - d(a, n) -> (loss, counts as active)."""
    if soft_margin:
        return max(x, 0.0) + math.log1p(math.exp(-abs(x))), x > 0
    return max(x + margin, 0.0), x + margin > 0


def _derivative(x, margin, soft_margin):
    return 1 / (1 + math.exp(-x)) if soft_margin else float(x + margin > 0)


def _all_triplets(y, cy):
    for a in range(len(y)):
        pos, neg = _candidates(y, cy, a)
        for p in pos:
            for n in neg:
                yield a, p, n


def triplet_loss(
    labels,
    embeddings,
    strategy,
    margin=0.5,
    squared=False,
    soft_margin=False,
    memory=None,
    triplets=None,
    **own,
):
    """(loss, fraction) of ``strategy`` straight from the definitions: the mean item over
    the triplets it counts (over those with a positive hinge where its entry says
    ``averages_active``), fraction = share with a positive hinge. ``triplets``: the (a, p, n)
    a sampled strategy drew (distance_weighted has no brute force of its draws)."""
    d = distances(labels, embeddings, squared, memory)
    if triplets is None:
        triplets = picks(labels, embeddings, strategy, squared, memory, **own)
    values = [_item(d[a, p] - d[a, n], margin, soft_margin) for a, p, n in triplets]
    if _averages_active(strategy) and not soft_margin:
        positive = [v for v, _ in values if v > 0]
        if not positive:
            return 0.0, 0.0
        return float(np.mean(positive)), len(positive) / len(values)
    return _mean(values)


def _mean(values):
    if not values:
        return 0.0, 0.0
    return float(np.mean([v for v, _ in values])), float(np.mean([a for _, a in values]))


def triplet_loss_grad(
    labels,
    embeddings,
    strategy,
    margin=0.5,
    squared=False,
    soft_margin=False,
    memory=None,
    triplets=None,
    **own,
):
    """d loss / d embeddings [B, D] straight from the definitions, float64: d loss / d d
    one item at a time, then the chain rule through d(a, j) (0 where two embeddings
    coincide: the masked square root's gradient). Memory columns have no gradient."""
    y, e, cy, ce = _columns(labels, embeddings, memory)
    b = len(y)
    d = distances(labels, embeddings, squared, memory)
    if triplets is None:
        triplets = picks(labels, embeddings, strategy, squared, memory, **own)
    only_active = _averages_active(strategy) and not soft_margin
    g = np.zeros_like(d)  # d loss / d d, unnormalised
    count = 0
    for a, p, n in triplets:
        x = d[a, p] - d[a, n]
        if only_active and not x + margin > 0:
            continue
        count += 1
        g[a, p] += _derivative(x, margin, soft_margin)
        g[a, n] -= _derivative(x, margin, soft_margin)
    g /= max(count, 1)  # items: the counted triplets (with h > 0 where averages_active)
    diff = e[:, None, :] - ce[None, :, :]  # [B, N, D]
    if squared:
        dd_de = 2 * diff  # [a, j, :] = d d(a, j) / d e_a
    else:
        safe = np.where(d > 0, d, 1.0)
        dd_de = np.where((d > 0)[..., None], diff / safe[..., None], 0.0)
    # d(a, j) depends on e_a (+dd_de[a, j]) and, for a batch column j, on e_j (-dd_de[a, j]).
    grad = np.einsum("aj,ajk->ak", g, dd_de)
    grad -= np.einsum("aj,ajk->jk", g[:, :b], dd_de[:, :b])
    return grad


def distance_weights(
    labels, embeddings, cutoff=0.5, nonzero_loss_cutoff=1.4, memory=None
) -> np.ndarray:
    """Distance-weighted sampling's probabilities [B, N] (Wu et al. 2017, section 4), the
    paper's formula in plain numpy: each negative n of anchor a weighs 1 / q(max(d, cutoff))
    with q(d) = d^(D-2) (1 - d^2 / 4)^((D-3)/2), 0 where d >= nonzero_loss_cutoff; each row
    normalised (a row without weight stays 0). Powers, not logs: for small D only."""
    y, e, cy, _ = _columns(labels, embeddings, memory)
    dim = e.shape[1]
    d = np.maximum(distances(labels, embeddings, memory=memory), cutoff)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = d ** (dim - 2) * (1 - d**2 / 4) ** ((dim - 3) / 2)
        w = 1 / q
    raw = distances(labels, embeddings, memory=memory)
    negative = y[:, None] != cy[None, :]
    w = np.where(negative & (raw < nonzero_loss_cutoff) & np.isfinite(w), w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)
