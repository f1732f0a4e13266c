"""Detection: the one place that decides what a credential is (see the package doc).

:func:`secret_spans` finds the credentials of URI-like strings in a text; :func:`mask` also
masks the values of the environment's credentials (:func:`environment_secrets`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

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

# The shortest value of a credential-named environment variable that counts as a secret.
_MIN_ENV_SECRET = 8
# A value that names where a secret is, not the secret: a path, a variable, nothing.
_NOT_A_SECRET_VALUE = re.compile(r"(?:[/~.$]|[A-Za-z]:\\).*|\*+|\s*|true|false|none|null", re.I)


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
