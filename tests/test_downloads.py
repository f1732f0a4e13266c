"""Downloads from the official mirror are checked against the published sha256 before use.

The "official mirror" here is a local HTTP server standing in for it (the tests never reach
the network): the dataset's spec points at it, and the published checksums are the ones of
the files it serves, or a wrong one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import pytest

from tests.helpers import isolate_data_search, serve_folder, write_idx_folder
from tripletlab import data
from tripletlab.config import schema_for
from tripletlab.data import IDX_FILES, load_dataset
from tripletlab.errors import DataError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the machine's data, home folder or proxies."""
    return isolate_data_search(tmp_path, monkeypatch)


def _cfg(**kwargs):
    return schema_for("dataset", "mnist")(name="mnist", download=True, **kwargs)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _as_official(monkeypatch, url: str, sums: dict[str, str]) -> None:
    spec = dataclasses.replace(data.IDX_DATASETS["mnist"], url=url)
    monkeypatch.setitem(data.IDX_DATASETS, "mnist", spec)
    monkeypatch.setitem(data.PUBLISHED_SHA256, "mnist", sums)


def test_the_official_mirrors_are_https_and_every_file_has_a_published_sha256():
    for name, spec in data.IDX_DATASETS.items():
        assert spec.url.startswith("https://"), name
        sums = data.PUBLISHED_SHA256[name]
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
