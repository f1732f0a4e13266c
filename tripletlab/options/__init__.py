"""The options of each config group, declared without TensorFlow: schemas, checks, hooks.

One module per group (:mod:`.dataset`, :mod:`.model`, :mod:`.mining`, :mod:`.sampler`,
:mod:`.logger`, :mod:`.distribute`) holds the group's base schema and, for each of the
package's options, its schema and its entry in the group's registry
(:mod:`tripletlab.registry`), which names the code that implements it. A schema is a
dataclass of :func:`setting` fields; its ``check(self, cfg)`` method is the option's own
validation, run after its base classes' with ``self`` the config node and ``cfg`` the
whole config (None when the node is checked alone, as a Keras loss does). A plugin
declares its options the same way (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any

from tripletlab.errors import ConfigError

# A setting's bound: what validate() checks and the configuration reference prints.
BOUNDS = {">0": "> 0", ">=0": ">= 0", "(0,1)": "in (0, 1)"}


def setting(
    default: Any, help: str, *, choices: tuple[Any, ...] | None = None, bound: str | None = None
) -> Any:
    """A schema field with its one line of help and, optionally, the values it accepts:
    ``choices`` (a closed set) or ``bound`` (``">0"``, ``">=0"``, ``"(0,1)"``; null, where
    a key allows it, passes). :func:`tripletlab.config.validate` checks them and the
    configuration reference (docs/configuration.md) prints them. A subclass that only
    changes a default (``image_size: int | None = 224``) keeps its base class's metadata."""
    if bound is not None and bound not in BOUNDS:
        raise ValueError(f"bound={bound!r}: use one of {', '.join(BOUNDS)}")
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if bound is not None:
        metadata["bound"] = bound
    return field(default=default, metadata=metadata)


def metadata(schema: type, name: str) -> dict[str, Any]:
    """Field ``name``'s help, choices and bound in ``schema``: its own ``setting(...)``'s,
    each falling back to the nearest base class's (a subclass that changes a default or the
    help keeps the base's choices)."""
    import dataclasses

    merged: dict[str, Any] = {}
    for cls in reversed(schema.__mro__):
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                if f.name == name and f.metadata:
                    merged.update(f.metadata)
    return merged


def check_value(path: str, value: Any, meta: Mapping[str, Any]) -> None:
    """``value`` against a field's ``choices`` or ``bound``; ConfigError naming the fix."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        text = str(value)
        if text in ("True", "False"):  # a YAML or override bool in a str field
            text = text.lower()
        if value not in choices and text not in {str(c) for c in choices}:
            listed = ", ".join(map(str, choices))
            raise ConfigError(f"{path}={value!r} is not valid; choose one of: {listed}")
    bound = meta.get("bound")
    if bound == "(0,1)" and not 0.0 < value < 1.0:
        raise ConfigError(f"{path}={value!r} is not valid; it must be between 0 and 1")
    if bound in (">0", ">=0") and (value < 0 or (value == 0 and bound == ">0")):
        raise ConfigError(f"{path}={value!r} is not valid; it must be {BOUNDS[bound]}")
