"""Credentials never enter a config, and never leave the process: one gate, one redaction.

**Detection** (:mod:`.detection`, :func:`secret_spans`, the one place that decides what a
credential is): every URI-like string in a text, also one inside a longer text or inside
another URI's parameter, is split the way ``urllib.parse`` splits it. A password in its
userinfo (``user:pass@``) and the value of a credential-like query or fragment parameter
(``?token=``, ``#access_token=``) are credentials. Names and values are compared decoded
(percent and plus encoding, also double encoded), names case-insensitively and as suffixes
(``my_token``, ``x-api-key``, ``X-Amz-Signature``, ``accessToken``); a value is masked where
it stands in the raw text, whatever its encoding, and so is every other copy of it in the
same text.

**The gate** (:mod:`.gate`, :func:`refuse_secrets`): a config holding a credential is
refused with one message that names the key and the environment variable that carries the
secret instead, before anything is written (``tripletlab.cli.train`` composes the command
line as Hydra will; ``SecretGate``, a Hydra callback, checks Hydra's own composition at the
start of a run or sweep; each job checks its own config).

**Redaction** (:mod:`.redaction`, :func:`redact`): every writer of text out of the process
passes through it (the atomic file writers of :mod:`tripletlab.io_utils`, every log record,
the terminal of the commands, the trackers). A credential that slipped past the gate is
written as ``***``, and one warning names the writer it reached.

The public names are re-exported here; importing this package imports no Hydra.
"""

from __future__ import annotations

from typing import Any

from tripletlab.credentials.detection import (
    MASK,
    NOT_SECRET_NAMES,
    SECRET_NAMES,
    decoded,
    environment_secrets,
    find_secret,
    is_secret_name,
    mask,
    secret_spans,
)
from tripletlab.credentials.gate import (
    config_strings,
    refuse_config,
    refuse_environment_secrets,
    refuse_named_secrets,
    refuse_secrets,
)
from tripletlab.credentials.redaction import (
    RedactingStream,
    install_log_redaction,
    redact,
    redact_tree,
    redacted_output,
)

__all__ = [
    "MASK",
    "NOT_SECRET_NAMES",
    "SECRET_NAMES",
    "RedactingStream",
    "SecretGate",
    "config_strings",
    "decoded",
    "environment_secrets",
    "find_secret",
    "install_log_redaction",
    "is_secret_name",
    "mask",
    "redact",
    "redact_tree",
    "redacted_output",
    "refuse_config",
    "refuse_environment_secrets",
    "refuse_named_secrets",
    "refuse_secrets",
    "secret_spans",
]


def __getattr__(name: str) -> Any:
    if name == "SecretGate":  # hydra.callbacks' _target_: tripletlab.credentials.SecretGate
        from tripletlab.credentials.gate import _secret_gate

        return _secret_gate()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
