"""Downloads over https only, checked before use.

A file is written under a temporary name next to its target
(:func:`tripletlab.io_utils.atomic_path`, ``.<name>@<host>-<pid>-<hex>.part<suffix>``),
checked (its published sha256 when there is one, then the caller's format check) and only
then renamed; whatever fails, the temporary file is deleted. Temporary files left by a
killed download are removed by the next one (:func:`remove_stale_parts`). A redirect to
anything but https:// is refused unless ``dataset.allow_insecure_url=true``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tripletlab.errors import ConfigError, DataError
from tripletlab.io_utils import atomic_path, part_owner, this_host

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 60.0  # seconds a connection may stay silent before the download fails
# A download's temporary file untouched this long was left by a killed process.
STALE_PART_SECONDS = 2 * DOWNLOAD_TIMEOUT
INSECURE_SCHEMES = ("http", "file")  # downloadable only with dataset.allow_insecure_url=true


def check_download_url(url: str, allow_insecure: bool) -> None:
    """A ConfigError unless ``url`` is https://, or http:// / file:// with the opt-in."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme in INSECURE_SCHEMES and allow_insecure):
        return
    if scheme in INSECURE_SCHEMES:
        raise ConfigError(
            f"dataset.url={url} is {scheme}://, without TLS: what it serves can be replaced on "
            "the way, and no published checksum guards a mirror. Use an https:// mirror, or "
            "opt in with dataset.allow_insecure_url=true (tripletlab-fetch --allow-insecure-url)"
        )
    raise ConfigError(
        f"dataset.url={url} cannot be downloaded: use an https:// URL (http:// and file:// "
        "need dataset.allow_insecure_url=true)"
    )


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to https://: an https mirror must not hand over to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() != "https":
            raise urllib.error.URLError(
                f"redirected to {newurl}, which is not https (allowed only with "
                "dataset.allow_insecure_url=true)"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def remove_stale_parts(folder: Path) -> None:
    """Delete the temporary files of downloads that were killed: written by a process of this
    host that is gone, or untouched for STALE_PART_SECONDS (a live download writes at least
    every DOWNLOAD_TIMEOUT seconds, or fails)."""
    now = time.time()
    for part in folder.glob(".*.part*"):
        owner = part_owner(part)
        try:
            stale = now - part.stat().st_mtime > STALE_PART_SECONDS
            if owner is not None and owner[0] == this_host() and not stale:
                stale = not _process_exists(owner[1])
            if stale:
                part.unlink()
                log.info("removed %s, left by an interrupted download", part)
        except OSError:  # gone meanwhile, or not ours to remove: the download goes on
            continue


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def prepare_folder(target: Path) -> None:
    """Create ``target`` (a DataError if it cannot be) and clear killed downloads' files."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {target}: {exc.strerror or exc}") from None
    remove_stale_parts(target)


def opener(allow_insecure_url: bool = False) -> urllib.request.OpenerDirector:
    """A URL opener that follows redirects to https:// only (any, with the opt-in)."""
    if allow_insecure_url:
        return urllib.request.build_opener()
    return urllib.request.build_opener(_HttpsOnlyRedirects)


def download_file(
    fetcher: urllib.request.OpenerDirector,
    url: str,
    target: Path,
    sha256: str | None = None,
    check: Callable[[Path], None] | None = None,
) -> None:
    """Download ``url`` to ``target``; it takes that name only once checked: its ``sha256``
    (if given) and ``check(path)`` (which raises DataError). Every failure is a DataError
    naming the URL, and leaves no file behind."""
    log.info("downloading %s", url)
    with atomic_path(target) as tmp:
        try:
            with fetcher.open(url, timeout=DOWNLOAD_TIMEOUT) as response, tmp.open("wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        # URLError, HTTPError and timeouts are OSErrors; ValueError: a malformed URL.
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # URLError's reason drops the URL noise, but HTTPError's would drop the status.
            plain_url_error = isinstance(exc, urllib.error.URLError) and not isinstance(
                exc, urllib.error.HTTPError
            )
            reason = exc.reason if plain_url_error else exc
            raise DataError(f"{url}: {reason or type(exc).__name__}") from None
        # Check before the file takes its real name, so a bad download never looks like data.
        if sha256 is not None:
            digest = file_sha256(tmp)
            if digest != sha256:
                raise DataError(
                    f"{url}: sha256 {digest} is not the published {sha256}: the file is "
                    "damaged or was replaced; it was deleted (retry, or fetch the files by hand)"
                )
        if check is not None:
            check(tmp)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
