"""The gate: a config, a value or Hydra's composition holding a credential is refused with
one :class:`~tripletlab.errors.ConfigError` that says where the secret goes instead
(:func:`refuse_secrets`, :func:`refuse_config`, ``SecretGate``)."""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from tripletlab.credentials.detection import (
    _NOT_A_SECRET_VALUE,
    environment_secrets,
    find_secret,
    is_secret_name,
)
from tripletlab.errors import ConfigError

# Where the secret goes instead, by URI scheme (databases) or by config key.
_DATABASE_HINTS = (
    (("postgres", "postgresql"), "PostgreSQL reads PGPASSWORD or ~/.pgpass"),
    (("mysql", "mariadb"), "MySQL reads MYSQL_PWD or an option file (~/.my.cnf)"),
)
_MLFLOW_HINT = (
    "MLflow reads MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
)
_DOWNLOAD_HINT = "download the files yourself and point dataset.root at them"
_FETCH_HINT = "download the files yourself and give their folder with --root"


def _hint(key: str, masked_uri: str) -> str:
    scheme = masked_uri.split("://", 1)[0].lower().split("+", 1)[0]
    for schemes, hint in _DATABASE_HINTS:
        if scheme in schemes:
            return hint
    if key == "--url":
        return _FETCH_HINT
    if key.startswith("dataset.") or key.endswith(".url"):
        return _DOWNLOAD_HINT
    if scheme in ("http", "https") or "tracking" in key or key.startswith("logger."):
        return _MLFLOW_HINT
    return "the service's own environment variable or credentials file"


def refuse_secrets(values: Iterable[tuple[str, Any]]) -> None:
    """Raise ConfigError for the first ``(key, value)`` whose string value holds a credential."""
    for key, value in values:
        if not isinstance(value, str):
            continue
        # As urllib reads it: tabs and newlines removed ("https://u:\n  pw@h", a YAML block).
        masked = find_secret(value) or find_secret(re.sub(r"[\t\r\n]", "", value))
        if masked is None:
            continue
        raise ConfigError(
            f"{key} holds a credential ({masked}): tripletlab records its config and its "
            "messages (run and sweep folders, trackers, logs), so a secret there would be "
            f"written out. Remove it from the URI and give it another way: {_hint(key, masked)}"
        )


def refuse_config(cfg: Any, hydra_cfg: Any = None) -> None:
    """The gate on a composed config: every leaf, resolved (:func:`config_strings`), and
    Hydra's own settings (``hydra_cfg``, or ``cfg.hydra``: sweeper, launcher, overrides)."""
    from omegaconf import DictConfig

    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    if hydra_cfg is None and isinstance(cfg, Mapping | DictConfig) and "hydra" in cfg:
        hydra_cfg = cfg["hydra"]  # checked after the job's keys, which the message names
        cfg = {k: _child(cfg, k) for k in cfg if k != "hydra"}
    leaves = list(config_strings(cfg))
    if hydra_cfg is not None:
        leaves += config_strings(hydra_cfg, "hydra.")
    refuse_secrets(leaves)
    refuse_named_secrets(leaves)
    refuse_environment_secrets(leaves)


def refuse_environment_secrets(leaves: Iterable[tuple[str, Any]]) -> None:
    """ConfigError for a value that holds the value of a credential of the environment
    (:func:`environment_secrets`): ``logger.experiment=${oc.env:MLFLOW_TRACKING_PASSWORD}``
    in an experiment file someone gave you would send it to the tracker and the run folder."""
    secrets = environment_secrets()
    for key, value in leaves:
        if not isinstance(value, str):
            continue
        for name, secret in secrets.items():
            if secret in value or quote(secret, safe="") in value:
                raise ConfigError(
                    f"{key} holds the value of ${name} (***): tripletlab records its config "
                    "(run and sweep folders, trackers, logs), so it would be written out. "
                    f"Leave ${name} to the client that reads it from the environment"
                )


def refuse_named_secrets(leaves: Iterable[tuple[str, Any]]) -> None:
    """ConfigError for a key named like a credential holding one, outside any URI
    (``hydra.job.env_set.MLFLOW_TRACKING_PASSWORD=...``: Hydra records its settings in
    ``.hydra/hydra.yaml`` and ``multirun.yaml``). No key of tripletlab's configs has such
    a name; a path (``GOOGLE_APPLICATION_CREDENTIALS=/keys/sa.json``) is not a secret."""
    for key, value in leaves:
        name = str(key).rsplit(".", 1)[-1]
        if not isinstance(value, str) or value == name or not is_secret_name(name):
            continue
        if "://" in value or _NOT_A_SECRET_VALUE.fullmatch(value):
            continue  # a URI is read by secret_spans; a path or a flag is no secret
        raise ConfigError(
            f"{key} holds a credential (its name says so; value ***): tripletlab records its "
            "config (run and sweep folders, Hydra's .hydra/hydra.yaml and multirun.yaml), "
            "so a secret there would be written out. Set it in the environment instead"
        )


@functools.cache
def _secret_gate() -> type:
    """:class:`SecretGate`, built on first use: the package imports no Hydra (the atomic
    writers of :mod:`tripletlab.io_utils` use it). The package's ``__getattr__`` gives it."""
    from hydra.experimental.callback import Callback

    class SecretGate(Callback):
        """Hydra's composed config is checked before the run or the sweep writes anything
        (``conf/config.yaml``'s first callback: before Hydra makes a folder, writes
        ``multirun.yaml``, opens an Optuna storage or submits a job). A credential ends the
        command with one line and exit status 1."""

        def on_run_start(self, config: Any, **kwargs: Any) -> None:
            _gate_or_exit(config)

        def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
            _gate_or_exit(config)

    # Importable and picklable by name (a Slurm launcher pickles the sweep's callbacks).
    SecretGate.__module__, SecretGate.__qualname__ = "tripletlab.credentials", "SecretGate"
    return SecretGate


def _gate_or_exit(config: Any) -> None:
    try:
        refuse_config(config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        # SystemExit passes through Hydra's callback wrapper and its error report.
        sys.exit(1)


def config_strings(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a config (OmegaConf node or plain mapping) as (dotted key, value).

    Interpolations are resolved where they can be (an ``${oc.env:...}`` holding a password
    is caught too); a leaf that cannot be resolved is given unresolved.
    """
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, DictConfig | Mapping):
        keys = list(node.keys())
        for key in keys:
            child = _child(node, key)
            yield f"{prefix}{key}", str(key)  # a key is written too
            yield from config_strings(child, f"{prefix}{key}.")
    elif isinstance(node, ListConfig | list | tuple):
        for i in range(len(node)):
            yield from config_strings(_child(node, i), f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node


def _child(node: Any, key: Any) -> Any:
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, DictConfig | ListConfig):
        try:
            return node[key]
        except Exception:  # noqa: BLE001 - an interpolation that cannot be resolved here
            return node._get_node(key)._value()  # the unresolved "${...}" string
    return node[key]
