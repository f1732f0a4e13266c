"""``distribute=<name>``: the entries of the package's distributions; the code is in
:mod:`tripletlab.distribute` (each attaches itself with ``@DISTRIBUTIONS.register``): a
function ``(cpu_devices) -> tf.distribute.Strategy``."""

from __future__ import annotations

from dataclasses import dataclass

from tripletlab.options import setting
from tripletlab.registry import DISTRIBUTIONS, Option


@dataclass
class DistributeConfig:
    """``distribute=none|mirrored|multi_worker`` (:mod:`tripletlab.distribute`)."""

    name: str = setting(
        "none", "how training is replicated (tf.distribute), chosen with distribute=<name>"
    )
    cpu_devices: int = setting(
        0, "N > 0: split the CPU into N logical devices (mirrored without GPUs)", bound=">=0"
    )


for _name in ("none", "mirrored", "multi_worker"):
    DISTRIBUTIONS.add(Option(_name))
