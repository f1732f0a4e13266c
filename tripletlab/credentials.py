"""Credentials never enter a config: a URI that carries one is refused before anything is written.

A run writes its config to many places (Hydra's ``.hydra/*.yaml``, the run summary, the
HParams event file, MLflow's params, the sweep's multirun.yaml and summary.csv, run.log).
Redacting each of them is easy to get half right, so tripletlab refuses a URI with a
password (``scheme://user:secret@host``) or a credential query parameter (``?token=...``)
with one message that names the key and the environment variable that carries the secret
instead. The message shows the URI masked, never the secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tripletlab.errors import ConfigError

# Query parameters that carry a secret (lower case; "sig" is an Azure SAS signature).
SECRET_PARAMETERS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "token",
        "access_token",
        "auth_token",
        "api_key",
        "apikey",
        "key",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-security-token",
        "client_secret",
    }
)

# Where the secret goes instead, by URI scheme (databases) or by config key.
_DATABASE_HINTS = (
    (("postgres", "postgresql"), "PostgreSQL reads PGPASSWORD or ~/.pgpass"),
    (("mysql", "mariadb"), "MySQL reads MYSQL_PWD or an option file (~/.my.cnf)"),
)
_MLFLOW_HINT = (
    "MLflow reads MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
)
_DOWNLOAD_HINT = "download the files yourself and point dataset.root at them"
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]+")


def find_secret(text: str) -> str | None:
    """The first URI in ``text`` that carries a credential, masked; None if there is none."""
    for match in _URI.finditer(str(text)):
        uri = match.group(0)
        masked = _masked(uri)
        if masked != uri:
            return masked
    return None


def _masked(uri: str) -> str:
    """``uri`` with its password and secret query values replaced by ``***``."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:  # an unparsable port or bracket: look for user:pass@ by hand
        parts, password = None, None
    masked = uri
    if password:
        masked = masked.replace(f":{password}@", ":***@", 1)
    elif parts is None and re.search(r"://[^/@\s]*:[^/@\s]+@", uri):
        masked = re.sub(r"(://[^/@\s]*:)[^/@\s]+@", r"\1***@", uri, count=1)
    query = parts.query if parts is not None else ""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower() in SECRET_PARAMETERS and value:
            masked = masked.replace(f"{name}={value}", f"{name}=***", 1)
    return masked


def _hint(key: str, masked_uri: str) -> str:
    scheme = masked_uri.split("://", 1)[0].lower().split("+", 1)[0]
    for schemes, hint in _DATABASE_HINTS:
        if scheme in schemes:
            return hint
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
        masked = find_secret(value)
        if masked is None:
            continue
        raise ConfigError(
            f"{key} holds a credential ({masked}): tripletlab records its config in the run "
            "folder, the sweep folder and the trackers, so a secret there would be written to "
            f"disk. Remove it from the URI and give it another way: {_hint(key, masked)}"
        )


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
