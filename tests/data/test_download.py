"""Downloads from the official mirror are checked against the published sha256 before use.

The "official mirror" here is a local HTTP server standing in for it (the tests never reach
the network): the dataset's spec points at it, and the published checksums are the ones of
the files it serves, or a wrong one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import isolate_data_search, serve_folder, write_idx_folder
from tripletlab.data import IDX_FILES, idx, load_dataset
from tripletlab.errors import ConfigError, DataError
from tripletlab.registry import schema_for


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the machine's data, home folder or proxies."""
    return isolate_data_search(tmp_path, monkeypatch)


def _cfg(**kwargs):
    # The local server is http://: opted in, as a user of a plain-HTTP mirror would be.
    return schema_for("dataset", "mnist")(
        name="mnist", download=True, allow_insecure_url=True, **kwargs
    )


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _as_official(monkeypatch, url: str, sums: dict[str, str]) -> None:
    spec = dataclasses.replace(idx.IDX_DATASETS["mnist"], url=url)
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", spec)
    monkeypatch.setitem(idx.PUBLISHED_SHA256, "mnist", sums)


def test_the_official_mirrors_are_https_and_every_file_has_a_published_sha256():
    for name, spec in idx.IDX_DATASETS.items():
        assert spec.url.startswith("https://"), name
        sums = idx.PUBLISHED_SHA256[name]
        assert set(sums) == set(IDX_FILES.values())
        assert all(len(s) == 64 and int(s, 16) >= 0 for s in sums.values())


def test_files_matching_the_published_sha256_are_used(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_idx_folder(mirror)
    sums = {stem: _sha(mirror / f"{stem}.gz") for stem in IDX_FILES.values()}
    with serve_folder(mirror) as url:
        _as_official(monkeypatch, url, sums)
        ds = load_dataset(_cfg())
    assert ds.source == url and len(ds.x_train) == 20
    target = tmp_path / "home" / ".keras" / "datasets" / "mnist"
    assert {p.name: _sha(p) for p in target.iterdir()} == {f"{s}.gz": h for s, h in sums.items()}


def test_a_sha256_mismatch_is_a_clear_error_and_the_file_is_deleted(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_idx_folder(mirror)
    sums = {stem: _sha(mirror / f"{stem}.gz") for stem in IDX_FILES.values()}
    bad = IDX_FILES["train_labels"]
    sums[bad] = "0" * 64  # the mirror serves a valid IDX file, but not the published one
    with serve_folder(mirror) as url, pytest.raises(DataError) as err:
        _as_official(monkeypatch, url, sums)
        load_dataset(_cfg())
    message = str(err.value)
    assert f"{url}{bad}.gz: sha256 {_sha(mirror / f'{bad}.gz')}" in message
    assert f"is not the published {'0' * 64}" in message and "deleted" in message
    target = tmp_path / "home" / ".keras" / "datasets" / "mnist"
    assert not (target / f"{bad}.gz").exists()
    assert not [p for p in target.rglob("*") if ".part" in p.name]  # no temporary file left
    assert (target / f"{IDX_FILES['train_images']}.gz").exists()  # checked before: kept


def test_another_mirror_is_not_checked_against_the_published_sums(tmp_path, caplog):
    mirror = tmp_path / "mirror"
    write_idx_folder(mirror)
    with serve_folder(mirror) as url, caplog.at_level(logging.WARNING, logger="tripletlab"):
        ds = load_dataset(_cfg(url=url))  # the published sums are MNIST's: these differ
    assert len(ds.x_test) == 10
    assert f"{url} is not the official mirror: no published sha256 to check" in caplog.text


def test_plain_http_and_file_urls_need_the_opt_in(tmp_path):
    mirror = tmp_path / "mirror"
    write_idx_folder(mirror)
    target = tmp_path / "home" / ".keras" / "datasets" / "mnist"
    plain = schema_for("dataset", "mnist")
    with serve_folder(mirror) as url, pytest.raises(ConfigError) as err:
        load_dataset(plain(name="mnist", download=True, url=url))
    message = str(err.value)
    assert f"dataset.url={url} is http://, without TLS" in message
    assert "dataset.allow_insecure_url=true" in message and "--allow-insecure-url" in message
    assert not target.exists()  # refused before anything was downloaded
    file_url = mirror.as_uri() + "/"
    with pytest.raises(ConfigError, match=r"is file://, without TLS"):
        load_dataset(plain(name="mnist", download=True, url=file_url))
    with pytest.raises(ConfigError, match=r"ftp://host/ cannot be downloaded: use an https://"):
        load_dataset(plain(name="mnist", download=True, url="ftp://host/"))
    ds = load_dataset(plain(name="mnist", download=True, url=file_url, allow_insecure_url=True))
    assert ds.source == file_url and len(ds.x_train) == 20


def test_the_fetch_command_refuses_plain_http_in_one_line(tmp_path, capsys):
    from tripletlab.cli import fetch as fetch_cli

    assert fetch_cli.main(["mnist", "--url", "http://127.0.0.1:9/"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dataset.url=http://127.0.0.1:9/ is http://")
    assert "--allow-insecure-url" in err and len(err.splitlines()) == 1


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    """Sends the first kilobyte of a large file, then nothing until the test ends."""

    release = threading.Event()

    def do_GET(self):  # noqa: N802  (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + bytes(1022))
        self.wfile.flush()
        self.release.wait(60)

    def log_message(self, format, *args):  # noqa: A002
        pass


def test_the_part_file_of_a_killed_download_is_removed_by_the_next(tmp_path):
    target = tmp_path / "home" / ".keras" / "datasets" / "mnist"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    stalled_url = f"http://127.0.0.1:{server.server_address[1]}/"
    script = (
        "import sys; from tripletlab.data import fetch; "
        "fetch('mnist', url=sys.argv[1], allow_insecure_url=True)"
    )
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("TRIPLETLAB_DATA", None)
    proc = subprocess.Popen([sys.executable, "-c", script, stalled_url], env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(target.glob(".*.part*")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the download ended instead of stalling"
            time.sleep(0.05)
        proc.kill()  # SIGKILL: nothing of the process cleans up
        proc.wait()
    finally:
        _StallingHandler.release.set()
        server.shutdown()
        server.server_close()
    left = list(target.glob(".*.part*"))
    assert len(left) == 1  # what a killed download leaves
    mirror = tmp_path / "mirror"
    write_idx_folder(mirror)
    with serve_folder(mirror) as url:
        ds = load_dataset(_cfg(url=url))
    assert len(ds.x_train) == 20
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{s}.gz" for s in IDX_FILES.values())


def test_a_recent_part_file_of_another_host_is_left_alone(tmp_path):
    target = tmp_path / "home" / ".keras" / "datasets" / "mnist"
    target.mkdir(parents=True)
    # A download in progress on another machine sharing the folder, and one long dead.
    alive = target / f".{IDX_FILES['train_images']}.gz@otherhost-1-0a1b2c3d.part.gz"
    dead = target / f".{IDX_FILES['test_images']}.gz@otherhost-2-0a1b2c3d.part.gz"
    for part in (alive, dead):
        part.write_bytes(b"partial")
    hours_ago = time.time() - 3 * 3600
    os.utime(dead, (hours_ago, hours_ago))
    mirror = tmp_path / "mirror"
    write_idx_folder(mirror)
    with serve_folder(mirror) as url:
        load_dataset(_cfg(url=url))
    assert alive.exists() and not dead.exists()
