"""Atomic writers and small file helpers (tripletlab.io_utils)."""

from __future__ import annotations

import csv
import os
import stat

import pytest

from tripletlab import io_utils


def test_atomic_writers(tmp_path):
    io_utils.atomic_write_json(tmp_path / "sub" / "a.json", {"b": 1, "a": [1.5, "é"]})
    text = (tmp_path / "sub" / "a.json").read_text(encoding="utf-8")
    assert text == '{\n  "b": 1,\n  "a": [\n    1.5,\n    "é"\n  ]\n}\n'  # insertion order

    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": None}]
    io_utils.atomic_write_csv(tmp_path / "m.csv", rows, ["epoch", "loss", "map_at_r"])
    with open(tmp_path / "m.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [
            {"epoch": "1", "loss": "0.5", "map_at_r": ""},
            {"epoch": "2", "loss": "", "map_at_r": ""},
        ]
    with pytest.raises(ValueError):  # an unknown column is a bug, not dropped silently
        io_utils.atomic_write_csv(tmp_path / "m.csv", [{"oops": 1}], ["epoch"])
    assert (tmp_path / "m.csv").read_text().startswith("epoch,loss,map_at_r\n1,0.5,")  # intact

    io_utils.atomic_write_text(tmp_path / "t.txt", "x\ty\n")
    with pytest.raises(TypeError):
        io_utils.atomic_write_bytes(tmp_path / "t.txt", "not bytes")
    assert (tmp_path / "t.txt").read_text() == "x\ty\n"
    # No temporary files are left behind, even after the failed writes.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "sub", "t.txt"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = io_utils.atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0600


def test_atomic_path_keeps_the_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "data.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError), io_utils.atomic_path(target) as tmp:
        assert tmp.suffix == ".gz" and tmp.parent == tmp_path
        tmp.write_text("half")
        raise RuntimeError("download broke")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.gz"]


def test_read_yaml_and_is_hidden(tmp_path):
    (tmp_path / "a.yaml").write_text("a: [1, 2]\n")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    assert io_utils.read_yaml(tmp_path / "a.yaml") == {"a": [1, 2]}
    assert io_utils.read_yaml(tmp_path / "bad.yaml") is None
    assert io_utils.read_yaml(tmp_path / "missing.yaml") is None
    assert io_utils.is_hidden(tmp_path / ".DS_Store")
    assert not io_utils.is_hidden(tmp_path / ".x" / "a.png")  # only the name, without a root
    assert io_utils.is_hidden(tmp_path / ".x" / "a.png", root=tmp_path)
    assert not io_utils.is_hidden(tmp_path / "x" / "a.png", root=tmp_path)
