"""``mining=<name>``: the schemas and entries of the package's mining strategies; the code
is in :mod:`tripletlab.losses.strategies`, the brute force in :mod:`tripletlab.losses.reference`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from tripletlab.errors import ConfigError
from tripletlab.options import setting
from tripletlab.registry import STRATEGIES, Strategy

NEGATIVES = ("semi_hard", "hard")  # easy_positive's choice of negative


@dataclass
class MiningConfig:
    """The keys every strategy has; a strategy's schema adds its own (its keyword
    arguments). Validation runs this ``check`` before a subclass's own."""

    strategy: str = setting(MISSING, "the mining strategy, chosen with mining=<name>")
    margin: float = setting(0.2, "the triplet margin, > 0 (unused with soft_margin)")
    squared: bool = setting(False, "squared euclidean distances instead of euclidean")
    soft_margin: bool = setting(False, "log(1 + exp(x)) instead of max(x + margin, 0)")
    memory_size: int = setting(
        0,
        "cross-batch memory (XBM): embeddings of earlier steps mined with the batch; 0: off",
        bound=">=0",
    )
    memory_start: int = setting(0, "the training step from which the memory is mined", bound=">=0")

    def check(self, cfg: Any) -> None:
        """The hooks of the chosen strategy against the rest of the config (``cfg``: the
        whole config, or None when the node is checked alone, as a Keras loss does)."""
        if not self.soft_margin and self.margin <= 0:
            raise ConfigError(
                f"mining.margin={self.margin!r} is not valid; it must be > 0 (or set "
                "mining.soft_margin=true)"
            )
        entry = STRATEGIES.option(self.strategy)
        if self.memory_size and "memory" not in entry.step_inputs:
            raise ConfigError(
                f"mining={self.strategy} mines no cross-batch memory: set mining.memory_size=0"
            )
        if entry.unit_vectors and cfg is not None and not cfg.model.l2_normalize:
            raise ConfigError(
                f"mining={self.strategy} needs L2-normalised embeddings: set "
                "model.l2_normalize=true"
            )


@dataclass
class EasyPositiveMiningConfig(MiningConfig):
    """Each anchor's nearest positive, with a semi-hard or the hardest negative."""

    strategy: str = "easy_positive"
    negatives: str = setting(
        "semi_hard", "semi_hard or hard: the negative for each anchor", choices=NEGATIVES
    )


@dataclass
class DistanceWeightedMiningConfig(MiningConfig):
    """One negative per positive pair, drawn with probability ∝ min(λ, 1/q(d))."""

    strategy: str = "distance_weighted"
    cutoff: float = setting(0.5, "distances below it weigh as much as it (the clip λ)")
    nonzero_loss_cutoff: float = setting(1.4, "negatives at or beyond it are never drawn")

    def check(self, cfg: Any) -> None:
        """Its weights are the density of distances between unit vectors (euclidean)."""
        if self.squared:
            raise ConfigError(
                "mining=distance_weighted samples by euclidean distances: set mining.squared=false"
            )
        if not 0 < self.cutoff < self.nonzero_loss_cutoff <= 2:
            raise ConfigError(
                f"mining.cutoff={self.cutoff} and mining.nonzero_loss_cutoff="
                f"{self.nonzero_loss_cutoff} are not valid; they need 0 < cutoff < "
                "nonzero_loss_cutoff <= 2 (distances between unit vectors are at most 2)"
            )


_CODE = "tripletlab.losses.strategies"
_REFERENCE = "tripletlab.losses.reference"
STRATEGIES.add(
    Strategy(
        "batch_all",
        target=f"{_CODE}:batch_all_triplet_loss",
        reference=f"{_REFERENCE}:batch_all_triplets",
        averages_active=True,
        keras_class="TripletBatchAllLoss",
    )
)
STRATEGIES.add(
    Strategy(
        "batch_hard",
        target=f"{_CODE}:batch_hard_triplet_loss",
        reference=f"{_REFERENCE}:batch_hard_picks",
        keras_class="TripletHardLoss",  # tensorflow-addons' name
    )
)
STRATEGIES.add(
    Strategy(
        "semi_hard",
        target=f"{_CODE}:semi_hard_triplet_loss",
        reference=f"{_REFERENCE}:semi_hard_picks",
        keras_class="TripletSemiHardLoss",
    )
)
STRATEGIES.add(
    Strategy(
        "easy_positive",
        EasyPositiveMiningConfig,
        target=f"{_CODE}:easy_positive_triplet_loss",
        reference=f"{_REFERENCE}:easy_positive_picks",
    )
)
STRATEGIES.add(
    Strategy(
        "distance_weighted",
        DistanceWeightedMiningConfig,
        target=f"{_CODE}:distance_weighted_triplet_loss",
        step_inputs=("memory", "seed"),
        unit_vectors=True,
        reference=None,  # sampled: the tests give the brute force the drawn triplets
    )
)
