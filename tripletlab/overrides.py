"""Hydra override lines, read without Hydra."""

from __future__ import annotations

import re


def override_key(line: str) -> str:
    """What a Hydra override line sets: ``model=lenet``, ``+model=lenet`` and
    ``++model=lenet`` -> ``model``; a deletion ``~model`` and another package ``model@x=lenet``
    keep their marks (``~model``, ``model@x``), as they set other things."""
    return re.sub(r"^\+{1,2}", "", str(line)).split("=", 1)[0].strip()
