"""Hydra's and OmegaConf's composition errors as one line naming the valid keys."""

from __future__ import annotations

import dataclasses

from tripletlab.registry import REGISTRIES


def explain_compose_error(exc: BaseException | None) -> str | None:
    """A key that its node's schema lacks, found in ``exc`` or its causes (Hydra wraps
    OmegaConf's "Key 'root' not in 'DigitsConfig'"), as a message naming the valid keys;
    None for any other error."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConfigAttributeError, ConfigKeyError)) and "not in" in str(exc):
            schema, key = getattr(exc, "object_type", None), getattr(exc, "full_key", None)
            if dataclasses.is_dataclass(schema) and key:
                return unknown_key_message(str(key), schema)
        exc = exc.__cause__ or exc.__context__
    return None


def unknown_key_message(key: str, schema: type) -> str:
    """``dataset.root is not a key of dataset=digits; its keys: name, image_size, ...``."""
    keys = ", ".join(f.name for f in dataclasses.fields(schema))
    return f"{key} is not a key of {where(key, schema)}; its keys: {keys}"


def where(key: str, schema: type | None) -> str:
    """The node holding ``key``, named as the user chose it: ``dataset=digits``, ``trainer``."""
    parent = key.rpartition(".")[0]
    registry = REGISTRIES.get(parent)
    schemas = registry.schemas() if registry is not None else {}
    options = [name for name, s in schemas.items() if s is schema]
    return f"{parent}={options[0]}" if options else parent or "the config"
