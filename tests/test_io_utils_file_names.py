"""File and folder names that are not UTF-8 (Linux allows any bytes): every command that reads
or writes names processes them, writes them escaped (``\\xNN``, tripletlab.io_utils), and
never ends in a traceback. The names are generated: each bad byte sequence in a file name,
in a folder name and in ``--out``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tripletlab
from tests.helpers import ROOT, TINY
from tripletlab.io_utils import atomic_write_json, atomic_write_text, escape_name

# Byte sequences that are not UTF-8: a lone high byte, Latin-1 é, a truncated two-byte
# sequence, an encoded surrogate, an overlong '/', and a valid é next to a bad byte.
BAD = [b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", "é".encode() + b"\xfe"]


def _name(stem: bytes, bad: bytes, suffix: bytes = b"") -> str:
    return os.fsdecode(stem + bad + suffix)


def _escaped(bad: bytes) -> str:
    """How a name's bytes are written: \\xNN for each byte that is not UTF-8."""
    return escape_name(os.fsdecode(bad))


@pytest.mark.parametrize("bad", BAD)
def test_a_name_is_written_escaped_and_read_back_exactly(bad, tmp_path):
    name = _name(b"img", bad, b".png")
    text = escape_name(name)
    text.encode("utf-8")  # always encodable
    valid = bad.decode("utf-8", "ignore")
    assert text.startswith("img") and text.endswith(".png") and valid in text
    assert all(f"\\x{b:02x}" in text for b in bad if b >= 0x80 and not valid)
    atomic_write_text(tmp_path / "t.txt", f"{name}\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == f"{text}\n"
    atomic_write_json(tmp_path / "t.json", {name: [name]})
    assert json.loads((tmp_path / "t.json").read_text(encoding="utf-8")) == {name: [name]}
    assert escape_name("plain é.png") == "plain é.png"


# ------------------------------------------------------------------ the reuse commands
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tripletlab.data import load_dataset

    run_dir = tmp_path_factory.mktemp("run")
    cfg = tripletlab.compose([*TINY, "trainer.mixed_precision=off"])
    tripletlab.train(cfg, run_dir)
    return run_dir, load_dataset(cfg.dataset)


@pytest.fixture(scope="module")
def gallery(run, tmp_path_factory):
    """Test images under every bad name: as a file, as a class folder, and both."""
    _, data = run
    root = tmp_path_factory.mktemp("gallery")
    i = 0
    for bad in BAD:
        for folder, file in ((b"ok", b"f"), (b"c", b"f"), (b"c", b"")):
            folder_name = _name(folder, bad if folder == b"c" else b"")
            (root / folder_name).mkdir(exist_ok=True)
            path = root / folder_name / _name(b"img%d" % i, bad if file else b"", b".png")
            Image.fromarray(data.x_test[i][..., 0]).save(path)
            i += 1
    return root


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def _utf8_rows(path: Path) -> list[list[str]]:
    """A TSV's rows; it must be valid UTF-8."""
    text = path.read_bytes().decode("utf-8")
    return list(csv.reader(text.splitlines(), delimiter="\t"))


@pytest.mark.e2e
def test_embed_and_index_process_every_name_and_write_it_escaped(run, gallery, tmp_path, capsys):
    from tripletlab.cli.embed import main as embed_main
    from tripletlab.cli.index import main as index_main

    run_dir, _ = run
    names = _files(gallery)
    for out in (
        tmp_path / _name(b"out", b"\xff", b".tsv"),  # --out not UTF-8
        tmp_path / _name(b"dir", b"\xe9") / "out.tsv",  # in a folder that is not
    ):
        out.parent.mkdir(exist_ok=True)
        assert embed_main([str(run_dir), str(gallery), "--out", str(out)]) == 0
        printed = capsys.readouterr()
        assert escape_name(out) in printed.out and "Traceback" not in printed.err
        rows = _utf8_rows(out)[1:]
        assert [r[0] for r in rows] == [escape_name(gallery / n) for n in names]

    # The gallery searched exactly, then through the index that holds every file exactly.
    out = tmp_path / "q.tsv"
    argv = [str(run_dir), str(gallery / _files(gallery)[0]), "--out", str(out)]
    argv += ["--neighbours", "3", "--gallery", str(gallery)]
    assert embed_main(argv) == 0
    exact = _utf8_rows(out.with_name("q.neighbours.tsv"))
    assert index_main([str(run_dir), "--gallery", str(gallery), "--kind", "exact"]) == 0
    (items,) = (run_dir / "index").glob("build-*/items.tsv")
    rows = _utf8_rows(items)
    assert rows[0] == ["name", "label", "file"]
    assert [r[0] for r in rows[1:]] == [escape_name(n) for n in names]
    assert [r[1] for r in rows[1:]] == [escape_name(Path(n).parent) for n in names]
    from tripletlab.reuse.index import open_index
    from tripletlab.run_folder import RunFolder

    assert open_index(RunFolder(run_dir)).files == names  # the very names, to read them
    capsys.readouterr()
    assert embed_main(argv) == 0  # the contact sheet reads the indexed files
    assert "exact index" in capsys.readouterr().out
    indexed = _utf8_rows(out.with_name("q.neighbours.tsv"))
    assert [r[:4] for r in indexed] == [r[:4] for r in exact]
    distances = [[float(r[4]) for r in rows[1:]] for rows in (indexed, exact)]
    np.testing.assert_allclose(*distances, atol=1e-4)
    assert out.with_name("q.neighbours.png").is_file()


@pytest.mark.e2e
@pytest.mark.slow  # four commands, each a fresh process that loads TensorFlow
def test_commands_on_a_run_folder_whose_name_is_not_utf8(run, gallery, tmp_path):
    """evaluate, visualize and summarize on a copy of the run under a bad name, and embed
    printing to a strict UTF-8 stdout (another locale than this machine's C.UTF-8)."""
    run_dir, _ = run
    parent = tmp_path / _name(b"sweep", b"\xfe")
    copy = parent / _name(b"run", b"\xff")
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("index"))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "TF_CPP_MIN_LOG_LEVEL": "2"}
    bin_dir = Path(sys.executable).parent
    commands = [
        ["tripletlab-evaluate", str(copy)],
        ["tripletlab-visualize", str(copy), "--max-points", "50"],
        ["tripletlab-summarize", str(parent)],
        [
            "tripletlab-embed",
            str(copy),
            str(gallery),
            "--out",
            str(copy / _name(b"e", b"\xe9", b".tsv")),
        ],
    ]
    for command in commands:
        proc = subprocess.run(
            [str(bin_dir / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            errors="surrogateescape",
            env=env,
            cwd=ROOT,
            timeout=300,
        )
        assert proc.returncode == 0, (command[0], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, command[0]
        assert escape_name(copy if command[0] != "tripletlab-summarize" else parent) in (
            proc.stdout + proc.stderr
        ), command[0]
    for written in ("summary.csv", "summary.md"):
        (parent / written).read_bytes().decode("utf-8")  # valid UTF-8, the name escaped
    assert escape_name(copy.name) in (parent / "summary.csv").read_text()


# ------------------------------------------------------------------ image_folder datasets
@pytest.mark.parametrize("stream", ["false", "true"])
def test_an_image_folder_with_names_that_are_not_utf8_loads(stream, tmp_path):
    """Class folders and files with bad names: every image is read (in memory or streamed),
    and the class names are the folder names, escaped."""
    from tripletlab.data import load_dataset

    rng = np.random.default_rng(0)
    root = tmp_path / _name(b"data", b"\xfe")
    classes = [_name(b"c", bad) for bad in BAD[:4]]
    for folder in classes:
        (root / folder).mkdir(parents=True)
        for i, bad in enumerate(BAD):
            image = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(image).save(root / folder / _name(b"i%d" % i, bad, b".png"))
    cfg = tripletlab.compose(
        ["dataset=image_folder", f"dataset.root='{root}'", f"dataset.stream={stream}"]
    )
    data = load_dataset(cfg.dataset)
    assert sorted(data.class_names) == sorted(escape_name(c) for c in classes)
    assert len(data.y_train) + len(data.y_test) == len(classes) * len(BAD)
    images = np.asarray(data.x_train)  # streamed: decoded by TensorFlow from the names' bytes
    assert images.shape[0] == len(data.y_train) and images.dtype == np.uint8
