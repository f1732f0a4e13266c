"""Credentials never enter a config, and never leave the process: one gate, one redaction.

**Detection** (:func:`secret_spans`, the one place that decides what a credential is): every
URI-like string in a text, also one inside a longer text or inside another URI's parameter,
is split the way ``urllib.parse`` splits it. A password in its userinfo (``user:pass@``) and
the value of a credential-like query or fragment parameter (``?token=``, ``#access_token=``)
are credentials. Names and values are compared decoded (percent and plus encoding, also
double encoded), names case-insensitively and as suffixes (``my_token``, ``x-api-key``,
``X-Amz-Signature``, ``accessToken``); a value is masked where it stands in the raw text,
whatever its encoding, and so is every other copy of it in the same text.

**The gate** (:func:`refuse_secrets`): a config holding a credential is refused with one
message that names the key and the environment variable that carries the secret instead,
before anything is written (``tripletlab.cli.train`` composes the command line as Hydra will;
``SecretGate``, a Hydra callback, checks Hydra's own composition at the start of a run
or sweep; each job checks its own config).

**Redaction** (:func:`redact`): every writer of text out of the process passes through it
(the atomic file writers of :mod:`tripletlab.io_utils`, every log record, the terminal of the
commands, the trackers). A credential that slipped past the gate is written as ``***``, and
one warning names the writer it reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from tripletlab.errors import ConfigError

log = logging.getLogger("tripletlab")

MASK = "***"

# Parameter names that carry a secret, normalised (lower case, words joined by "_"). A name
# also counts when it ends with one of them after a separator: my_token, x-api-key.
SECRET_NAMES = frozenset(
    {
        *("password", "passwd", "pwd", "pass", "passphrase", "secret", "token", "key"),
        *("access_token", "auth_token", "api_key", "apikey", "accesstoken", "authtoken"),
        *("sig", "signature", "credential", "credentials", "auth", "session", "session_id"),
        *("sessionid", "sessiontoken", "jwt", "bearer", "secretkey", "accesskey"),
        *("privatekey", "sastoken", "client_secret", "authorization"),
    }
)
# Names that end like a secret but never hold one (pagination cursors, sort orders).
NOT_SECRET_NAMES = frozenset(
    {"sort_key", "partition_key", "primary_key", "page_token", "next_page_token", "token_type"}
)
# A name ending in a secret name this long counts without a separator (mytoken).
_MIN_JOINED = 5
# A value shorter than this is masked only where it stands, not wherever it appears.
_MIN_COPY_LENGTH = 6

# "scheme://", its characters also percent-encoded once or twice (a URI inside a parameter,
# a sweep job's folder name where "/" is written %2F).
_URI_START = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*(?P<sep>(?::|%3a|%253a)(?:/|%2f|%252f){2})", re.IGNORECASE
)
# What ends a URI in text: white space, quotes, brackets that URIs never hold unencoded.
_URI_END = re.compile(r"[\s'\"<>`{}|^]")
# An authority may still hold them: urllib reads "https://u:p'w@h" as user "u", password
# "p'w" (an unencoded quote or brace in a password). It ends at white space, "/?#", or a
# "," (a list: '"https://h","u:x@y"').
_AUTHORITY_END = re.compile(r"[\s/?#,]")
# A user name alone that is a token (https://ghp_...@github.com): a known token prefix, or
# a long word of letters and digits (a person's or service's name holds no digit run
# like this; an e-mail has "." or "@").
_TOKEN_PREFIXES = (
    *("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "gldt-", "glptt-"),
    *("xoxb-", "xoxp-", "xoxa-", "xoxs-", "hf_", "sk-", "npm_", "pypi-", "eyJ"),
)
_TOKEN_LIKE = re.compile(r"(?=[^.@]*[0-9])(?=[^.@]*[A-Za-z])[A-Za-z0-9_\-~+/=]{20,}")

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


# ------------------------------------------------------------------------ detection
def decoded(text: str, rounds: int = 4) -> str:
    """``text`` with percent and plus encoding undone, up to ``rounds`` times (double
    encoding: ``%253D`` -> ``%3D`` -> ``=``)."""
    for _ in range(rounds):
        plain = unquote_plus(text)
        if plain == text:
            break
        text = plain
    return text


def is_secret_name(name: str) -> bool:
    """Whether a parameter named ``name`` (raw, maybe encoded) carries a credential."""
    name = decoded(name).strip()
    camel = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)  # accessToken -> access_Token
    forms = [re.sub(r"[^a-z0-9]+", "_", f.lower()).strip("_") for f in (name, camel)]
    for form in forms:
        if form in NOT_SECRET_NAMES:
            return False
        if form in SECRET_NAMES or any(form.endswith("_" + s) for s in SECRET_NAMES):
            return True
    # Joined words (PRIVATETOKEN, mypassword): only the longer names ("key" is in "monkey").
    return any(forms[0].endswith(s) for s in SECRET_NAMES if len(s) >= _MIN_JOINED)


def _is_mask(value: str) -> bool:
    """An empty or masked value (``***``, also followed by the punctuation of a message)."""
    plain = decoded(value)
    return plain.startswith(MASK) and not any(c.isalnum() for c in plain) or not plain


def _param_spans(raw: str, offset: int, separators: str) -> Iterator[tuple[int, int]]:
    """Spans (in the whole text) of credential values among ``name=value`` pairs."""
    start = 0
    for piece in re.split(f"([{separators}])", raw):
        if piece and piece not in separators:
            name, eq, value = piece.partition("=")
            if eq:
                begin = offset + start + len(name) + 1
                if is_secret_name(name) and not _is_mask(value):
                    yield begin, begin + len(value)
                elif _has_secret_inside(value):
                    yield begin, begin + len(value)  # a URI with a secret, encoded in a value
            elif _has_secret_inside(piece):
                yield offset + start, offset + start + len(piece)  # an encoded "token=..."
            elif "=" in decoded(piece):
                inner_name, _, inner_value = decoded(piece).partition("=")
                if is_secret_name(inner_name) and not _is_mask(inner_value):
                    yield offset + start, offset + start + len(piece)
        start += len(piece)


def _uri_spans(text: str, start: int, body: int, end: int, encoded: bool) -> list:
    """Credential spans of the URI ``text[start:end]`` whose part after "://" starts at
    ``body``. A URI whose separator itself is encoded is read as it stands (a job folder
    name: only its "/" were encoded), else masked whole after its scheme when its decoded
    form holds a credential."""
    if encoded:
        spans = _uri_spans(text, start, body, end, False)
        if spans or not _has_secret_inside(text[start:end]):
            return spans
        return [(body, end)]
    spans = []
    rest = text[body:end]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" not in authority and authority == rest:  # cut at a quote or a brace?
        stop = _AUTHORITY_END.search(text, body)
        longer = text[body : stop.start() if stop else len(text)]
        if "@" in longer:
            authority = longer
    if "@" in authority:
        userinfo = authority[: authority.rindex("@")]
        user, colon, password = userinfo.partition(":")
        if colon and password and not _is_mask(password):
            spans.append((body + len(user) + 1, body + len(userinfo)))
        elif not colon and decoded(userinfo).partition(":")[2]:
            spans.append((body, body + len(userinfo)))  # user%3Apass
        elif not colon and _is_token(decoded(userinfo)):
            spans.append((body, body + len(userinfo)))  # https://TOKEN@host
    after = rest[len(authority) :]
    query_at, fragment_at = after.find("?"), after.find("#")
    base = body + len(authority)
    if query_at >= 0 and (fragment_at < 0 or query_at < fragment_at):
        query_end = fragment_at if fragment_at >= 0 else len(after)
        spans += _param_spans(after[query_at + 1 : query_end], base + query_at + 1, "&;")
    if fragment_at >= 0:
        spans += _param_spans(after[fragment_at + 1 :], base + fragment_at + 1, "&;?")
    return spans


def _is_token(user: str) -> bool:
    """Whether a user name given without a password is a token (see _TOKEN_LIKE)."""
    return user.startswith(_TOKEN_PREFIXES) and len(user) > 8 or bool(_TOKEN_LIKE.fullmatch(user))


def _candidates(text: str) -> Iterator[tuple[int, int, int, bool]]:
    """(start, body, end, encoded) of every URI-like string: ``body`` is where the part
    after "://" begins; ``encoded``: the separator itself is percent-encoded. A URI inside
    another one (``?next=https://...``) is a candidate of its own."""
    for match in _URI_START.finditer(text):
        end_match = _URI_END.search(text, match.end())
        end = end_match.start() if end_match else len(text)
        yield match.start(), match.end(), end, match.group("sep") != "://"


def secret_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, merged (start, end) spans of every credential in ``text`` (see the module
    doc), copies of a found value elsewhere in the text included."""
    text = str(text)
    if not _URI_START.search(text):
        return []
    spans = []
    for start, body, end, encoded in _candidates(text):
        spans += _uri_spans(text, start, body, end, encoded)
    copies: set[str] = set()
    for value in {x for a, b in spans for x in _levels(text[a:b])}:
        once = quote(value, safe="")  # the same value elsewhere, in any encoding
        copies |= {value, once, quote_plus(value, safe=""), quote(once, safe="")}
    for value in copies:
        if len(value) >= _MIN_COPY_LENGTH and not _is_mask(value):
            at = text.find(value)
            while at >= 0:
                spans.append((at, at + len(value)))
                at = text.find(value, at + 1)
    return _merged(spans)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _has_secret(text: str) -> bool:
    return bool(secret_spans(text))


def _has_secret_inside(raw: str) -> bool:
    """Whether ``raw``, decoded one level (a URI given as a parameter's value, or with an
    encoded "://"), holds a credential; deeper levels are decoded by the recursion."""
    once = unquote_plus(raw)
    return once != raw and _has_secret(once)


def _levels(value: str, rounds: int = 3) -> set[str]:
    """``value`` and its decodings, one level at a time (``+`` kept and read as a space)."""
    out, current = {value}, {value}
    for _ in range(rounds):
        current = {f(v) for v in current for f in (unquote, unquote_plus)} - out
        if not current:
            break
        out |= current
    return out


def environment_secrets() -> dict[str, str]:
    """The environment variables named like a credential (``MLFLOW_TRACKING_PASSWORD``,
    ``PGPASSWORD``, ``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``...) whose value is one: at least
    :data:`_MIN_ENV_SECRET` characters, not a path or a flag (``PWD=/home/me``)."""
    # Every redaction asks: recomputed when the environment changed. os.environ decodes
    # each item it gives; its raw mapping compares in a microsecond.
    raw = getattr(os.environ, "_data", None)
    snapshot = dict(raw) if isinstance(raw, dict) else dict(os.environ)
    if _env_cache.get("environ") == snapshot:
        return _env_cache["secrets"]
    _env_cache["environ"] = snapshot
    _env_cache["secrets"] = {
        name: value
        for name, value in os.environ.items()
        if len(value) >= _MIN_ENV_SECRET
        and _is_secret_variable(name)
        and "://" not in value
        and not _NOT_A_SECRET_VALUE.fullmatch(value)
    }
    return _env_cache["secrets"]


_env_cache: dict[str, Any] = {}


@functools.lru_cache(maxsize=1024)
def _is_secret_variable(name: str) -> bool:
    return is_secret_name(name)  # cached: every redaction asks for the whole environment


def _environment_spans(text: str) -> list[tuple[int, int]]:
    """Where the value of a credential of the environment stands in ``text``, also
    percent-encoded: whatever took it there (``${oc.env:...}`` in any key, a library's
    message), it is written masked."""
    spans = []
    for value in environment_secrets().values():
        for form in {value, quote(value, safe=""), quote_plus(value, safe="")}:
            at = text.find(form)
            while at >= 0:
                spans.append((at, at + len(form)))
                at = text.find(form, at + 1)
    return spans


def mask(text: str) -> str:
    """``text`` with every credential replaced by ``***`` (the environment's too)."""
    text = str(text)
    spans = _merged(secret_spans(text) + _environment_spans(text))
    for a, b in reversed(spans):
        text = text[:a] + MASK + text[b:]
    return text


def find_secret(text: str) -> str | None:
    """The first URI in ``text`` that carries a credential, masked; None if there is none."""
    text = str(text)
    spans = secret_spans(text)
    if not spans:
        return None
    for start, _, end, _ in sorted(_candidates(text)):
        inside = [b for a, b in spans if start <= a <= end]
        if inside:
            # A password that holds a quote or a brace runs past where the URI seemed to
            # end: show the URI to its host, never a piece of the password.
            stop = _URI_END.search(text, max(end, *inside))
            return mask(text[start : stop.start() if stop else len(text)])
    return mask(text)


# ------------------------------------------------------------------------------ the gate
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


# The shortest value of a credential-named environment variable that counts as a secret.
_MIN_ENV_SECRET = 8
# A value that names where a secret is, not the secret: a path, a variable, nothing.
_NOT_A_SECRET_VALUE = re.compile(r"(?:[/~.$]|[A-Za-z]:\\).*|\*+|\s*|true|false|none|null", re.I)


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
    """:class:`SecretGate`, built on first use: this module imports no Hydra (the atomic
    writers of :mod:`tripletlab.io_utils` use it)."""
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
    SecretGate.__module__, SecretGate.__qualname__ = __name__, "SecretGate"
    return SecretGate


def _gate_or_exit(config: Any) -> None:
    try:
        refuse_config(config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        # SystemExit passes through Hydra's callback wrapper and its error report.
        sys.exit(1)


def __getattr__(name: str) -> Any:
    if name == "SecretGate":  # hydra.callbacks' _target_: tripletlab.credentials.SecretGate
        return _secret_gate()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# ------------------------------------------------------------------------- redaction
_warned: set[str] = set()
_local = threading.local()


def redact(text: str, where: str | None = None) -> str:
    """``text`` with every credential masked (:func:`mask`). When one was found and
    ``where`` names the writer (a file, "the terminal", "MLflow params"), one warning per
    writer says so: the gate refuses credentials in the config, so this one came another
    way (an environment variable, a library's message) and should be fixed at its source."""
    if not isinstance(text, str):
        return text
    masked = mask(text)
    if masked != text and where is not None:
        _warn(where, text)
    return masked


def _warn(where: str, text: str) -> None:
    if where in _warned or getattr(_local, "warning", False):
        return
    _warned.add(where)
    _local.warning = True
    try:
        log.warning(
            "a credential reached %s and was written masked (%s); it did not come from the "
            "config, which is checked before the run: give it through the environment",
            where,
            find_secret(text) or MASK,
        )
    finally:
        _local.warning = False


def redact_tree(obj: Any, where: str | None = None) -> Any:
    """A plain structure (dicts, lists, strings...) with every string, key or value,
    redacted."""
    if isinstance(obj, str):
        return redact(obj, where)
    if isinstance(obj, Mapping):
        return {redact_tree(k, where): redact_tree(v, where) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_tree(v, where) for v in obj)
    return obj


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: logging reports it itself
        return
    masked = redact(message, f"a log message ({record.name})")
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        masked = redact(text, f"a logged traceback ({record.name})")
        if masked != text:
            record.exc_text = masked
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_log_redaction() -> None:
    """Every log record of the process, whatever its logger or handler (run.log, the
    terminal), is redacted when it is made. Idempotent."""
    current = logging.getLogRecordFactory()
    if getattr(current, "tripletlab_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        _redact_record(record)
        return record

    factory.tripletlab_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class RedactingStream:
    """A text stream that redacts what is written to it (the rest is the wrapped stream's)."""

    def __init__(self, stream: Any, where: str):
        self._stream = stream
        self._where = where

    def write(self, text: str) -> int:
        self._stream.write(redact(text, self._where))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _excepthook(kind: type, value: BaseException, tb: Any) -> None:
    text = "".join(traceback.format_exception(kind, value, tb))
    sys.stderr.write(redact(text, "a traceback"))


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """Within the block, what is printed to stdout and stderr is redacted, and so is every
    log record (:func:`install_log_redaction`) and the traceback of a bug that ends the
    process."""
    install_log_redaction()
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout, "the standard output")
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr, "the standard error")
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
