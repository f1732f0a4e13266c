"""The endpoints a ``--resume`` replays, and whose credentials would go to them.

A sweep folder's ``multirun.yaml`` may come from someone else. Its overrides can name a
tracking URI, an Optuna storage or a download URL; MLflow, the database drivers and the
cloud clients send the credentials of the environment (``MLFLOW_TRACKING_PASSWORD``,
``PGPASSWORD``...) to whatever endpoint they are given. ``tripletlab-sweep --resume DIR``
therefore shows the endpoints it replays and refuses, with one message, to replay one that
the current command does not name while such a credential is set, unless
``--trust-endpoints`` (:func:`check_replayed_endpoints`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tripletlab.credentials import redact
from tripletlab.errors import TripletLabError


class UntrustedEndpoint(TripletLabError):
    """A resume would send the environment's credentials to an endpoint the sweep folder
    names and the current command does not."""


# Environment variables that a client sends to the endpoint it connects to: MLflow's for a
# tracking URI (logger.*), the database's or the cloud's by the URI's scheme.
MLFLOW_CREDENTIALS = (
    *("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"),
    *("MLFLOW_TRACKING_CLIENT_CERT_PATH", "DATABRICKS_TOKEN", "DATABRICKS_CLIENT_SECRET"),
)
_DB = {"postgres": ("PGPASSWORD", "PGPASSFILE"), "mysql": ("MYSQL_PWD",)}
SCHEME_CREDENTIALS = {
    **dict.fromkeys(("postgres", "postgresql"), _DB["postgres"]),
    **dict.fromkeys(("mysql", "mariadb"), _DB["mysql"]),
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    "gs": ("GOOGLE_APPLICATION_CREDENTIALS",),
    "databricks": ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_SECRET"),
}
_ENDPOINT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s,'\"()\[\]]+")


def replayed_endpoints(lines: list[str]) -> list[tuple[str, str]]:
    """(key, URI) of every URI in the values of override ``lines`` (a tracking URI, an
    Optuna storage, a download URL; each value of a sweep)."""
    out = []
    for line in lines:
        key, _, value = line.partition("=")
        for uri in _ENDPOINT.findall(value):
            out.append((key.lstrip("+~"), uri))
    return out


def endpoint_credentials(key: str, uri: str, environ: Any, tracking: bool = False) -> list[str]:
    """The variables set in ``environ`` that a client would send to ``uri`` (at ``key``;
    ``tracking``: whatever its key, it may be the tracking URI)."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        # libpq and the MySQL drivers take the server from the query too
        # (postgresql:///optuna?host=db.example); a value starting with "/" is a socket.
        for name, value in parse_qsl(parts.query):
            if name.lower() in ("host", "hostaddr") and not value.startswith("/"):
                host = host or value
    except ValueError:
        host = "?"
    scheme = uri.split("://", 1)[0].lower().split("+", 1)[0]
    names = list(SCHEME_CREDENTIALS.get(scheme, ()))
    if tracking or key.removeprefix("hydra.sweeper.params.").startswith("logger."):
        names += MLFLOW_CREDENTIALS
    if not host and scheme not in ("databricks",):
        return []  # a local file (sqlite:///, file://): nothing is sent anywhere
    return sorted(n for n in set(names) if environ.get(n))


def _same(uri: str) -> str:
    """``uri`` compared as an endpoint: scheme and host in lower case, no trailing "/"."""
    scheme, _, rest = uri.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}".rstrip("/")


def check_replayed_endpoints(
    path: Path, saved: list[str], given: list[str], environ: Any, trust: bool = False
) -> list[str]:
    """The endpoints ``saved`` (the overrides a resume replays from ``path``) names, as
    ``key=URI`` lines, masked. :class:`UntrustedEndpoint` when one that ``given`` (the
    current command's overrides) does not name would receive credentials from ``environ``,
    unless ``trust``."""
    given_keys = {line.partition("=")[0].lstrip("+~") for line in given}
    # Named means the same endpoint, not a text that contains it: "https://mlflow.corp.co"
    # is in "https://mlflow.corp.com" and is another host.
    named = {_same(uri) for _, uri in replayed_endpoints(given)}
    named |= {
        _same(uri) for uri in _ENDPOINT.findall(str(environ.get("MLFLOW_TRACKING_URI") or ""))
    }
    # A logger key that interpolates another (logger.tracking_uri=${dataset.root}) makes
    # any replayed endpoint the tracking URI.
    tracking = any(
        key.removeprefix("hydra.sweeper.params.").startswith("logger.") and "${" in value
        for key, _, value in (line.lstrip("+~").partition("=") for line in saved)
    )
    shown, refused = [], []
    for key, uri in replayed_endpoints(saved):
        shown.append(redact(f"{key}={uri}"))
        if key in given_keys or _same(uri) in named:
            continue  # the current command names it (or overrides it)
        sent = endpoint_credentials(key, uri, environ, tracking)
        if sent:
            refused.append(f"{redact(f'{key}={uri}')} (would receive {', '.join(sent)})")
    if refused and not trust:
        raise UntrustedEndpoint(
            f"--resume replays endpoints from {path} that this command does not name, and "
            f"your environment's credentials would go to them: {'; '.join(refused)}. A "
            "sweep folder may come from someone else; nothing was run. Name the endpoint "
            "yourself after --resume DIR (KEY=URI), or pass --trust-endpoints if you trust it"
        )
    return shown
