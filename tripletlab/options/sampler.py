"""``sampler=<name>``: the schemas and entries of the package's batch samplers; the code is
in :mod:`tripletlab.data.samplers` (each attaches itself with ``@SAMPLERS.register``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from tripletlab.errors import ConfigError
from tripletlab.options import setting
from tripletlab.registry import SAMPLERS, Option


@dataclass
class SamplerConfig:
    name: str = setting(MISSING, "the batch sampler, chosen with sampler=<name>")


@dataclass
class RandomSamplerConfig(SamplerConfig):
    """Shuffled batches of trainer.batch_size images."""

    name: str = "random"

    def check(self, cfg: Any) -> None:
        if cfg is not None and cfg.trainer.batch_size < 3:
            raise ConfigError(
                f"trainer.batch_size={cfg.trainer.batch_size} is not valid; it must be >= 3 "
                "to form a triplet"
            )


@dataclass
class PKSamplerConfig(SamplerConfig):
    """P classes x K images per batch (trainer.batch_size is not used)."""

    name: str = "pk"
    classes_per_batch: int = setting(8, "P: classes in each batch (at least 2)", bound=">0")
    images_per_class: int = setting(
        8, "K: images of each class in each batch (at least 2)", bound=">0"
    )

    def check(self, cfg: Any) -> None:
        for key, role in (
            ("classes_per_batch", "a negative from another class"),
            ("images_per_class", "a positive from the same class"),
        ):
            value = getattr(self, key)
            if value < 2:
                raise ConfigError(
                    f"sampler.{key}={value} is not valid; it must be >= 2 with the pk "
                    f"sampler: a triplet needs {role}"
                )


SAMPLERS.add(Option("random", RandomSamplerConfig))
SAMPLERS.add(Option("pk", PKSamplerConfig))
