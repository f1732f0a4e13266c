"""Triplet losses with online mining, as pure tensor functions (no Keras, no Hydra).

What lives here:

* :mod:`.distances`: pairwise distances (Gram matrix; [B, B], or [B, B + M] with a
  cross-batch memory) and the dtype the losses compute in;
* :mod:`.strategies`: the mining strategies (batch-all, batch-hard, semi-hard,
  easy-positive, distance-weighted), each a short function of labelled stages with its
  shapes in its docstring, declared in :mod:`tripletlab.options.mining`;
  :func:`get` looks one up, :func:`triplet_loss` dispatches;
* :mod:`.engines`: the exact engines batch-all and semi-hard mine with (positive slots,
  buckets, sorted rows), chosen by the explicit ``engine`` and ``jit_compile`` arguments;
* :mod:`.pieces`: masks, class blocks, hinge items and exact gradients they share;
* :mod:`.reference`: the brute force over every triplet (numpy) that the tests and
  ``python -m tripletlab.bench losses`` check against;
* :mod:`.keras`: the strategies as Keras loss classes for ``model.compile``.
"""

from tripletlab.losses.distances import pairwise_distances
from tripletlab.losses.strategies import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    distance_weighted_triplet_loss,
    easy_positive_triplet_loss,
    get,
    semi_hard_triplet_loss,
    triplet_loss,
)

__all__ = [
    "batch_all_triplet_loss",
    "batch_hard_triplet_loss",
    "distance_weighted_triplet_loss",
    "easy_positive_triplet_loss",
    "get",
    "pairwise_distances",
    "semi_hard_triplet_loss",
    "triplet_loss",
]
