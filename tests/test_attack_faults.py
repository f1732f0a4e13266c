"""Attacks on "every fault one line" (issue 25, part 5), by variants.

- ``index/index.json`` may name only a build inside the run's own ``index/`` folder: a name
  with a NUL byte or a lone surrogate, an ``index/`` that is itself a symlink out of the run
  folder, and a build whose ``index.faiss`` or ``items.tsv`` is a symlink out are refused
  with one ``error:`` line (the build is not read), never a traceback.
- ``tripletlab-index`` and ``tripletlab-embed --neighbours`` in a run folder whose name is
  not UTF-8 (Linux allows any bytes) build and use the index (faiss takes only UTF-8 paths).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

import tripletlab
from tests.helpers import TINY
from tripletlab.cli.embed import main as embed_main
from tripletlab.cli.index import main as index_main

pytestmark = pytest.mark.e2e
pytest.importorskip("faiss")

# Run-folder name suffixes that are not UTF-8: a lone high byte, an encoded surrogate, a
# truncated sequence next to a valid é.
BAD = [b"\xff", b"\xed\xa0\x80", "é".encode() + b"\xc3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run with an exact index of its train split, and 4 query images."""
    from tripletlab.data import load_dataset
    from tripletlab.reuse.index import build_index

    root = tmp_path_factory.mktemp("attack")
    run_dir = root / "run"
    cfg = tripletlab.compose([*TINY, "trainer.mixed_precision=off"])
    tripletlab.train(cfg, run_dir)
    data = load_dataset(cfg.dataset)
    queries = root / "queries"
    queries.mkdir()
    for i in range(4):
        Image.fromarray(data.x_test[i][..., 0]).save(queries / f"q{i}.png")
    build_index(run_dir, split="train", kind="exact")
    return run_dir, queries


def _copy(run_dir: Path, name: str | bytes) -> Path:
    copy = run_dir.parent / (os.fsdecode(name) if isinstance(name, bytes) else name)
    shutil.copytree(run_dir, copy, symlinks=True)
    return copy


def _embed(run_dir: Path, queries: Path, capsys) -> tuple[int, str, Path]:
    out = run_dir.parent / f"{run_dir.name}-q.tsv"
    capsys.readouterr()
    code = embed_main([str(run_dir), str(queries), "--out", str(out), "--neighbours", "2"])
    return code, capsys.readouterr().err, out


def _link_out(build: Path, file: str, outside: Path) -> None:
    """``build/file`` becomes a symlink to a real copy of it outside the run folder."""
    outside.mkdir(exist_ok=True)
    shutil.copy2(build / file, outside / file)
    (build / file).unlink()
    (build / file).symlink_to(outside / file)


def _tamper(run_dir: Path, variant: str) -> None:
    index_dir = run_dir / "index"
    manifest = json.loads((index_dir / "index.json").read_text())
    build = index_dir / manifest["build"]
    outside = run_dir.parent / f"{run_dir.name}-outside"
    names = {"NUL": "\x00", "NUL and ..": "\x00/../..", "lone surrogate": "\ud800"}
    if variant in names:
        manifest["build"] += names[variant]
        (index_dir / "index.json").write_text(json.dumps(manifest))
    elif variant == "index/ a symlink out":
        shutil.move(index_dir, outside)
        index_dir.symlink_to(outside, target_is_directory=True)
    else:  # "index.faiss a symlink out", "items.tsv a symlink out"
        _link_out(build, variant.split()[0], outside)


@pytest.mark.parametrize(
    "variant",
    [
        "NUL",
        "NUL and ..",
        "lone surrogate",
        "index/ a symlink out",
        "index.faiss a symlink out",
        "items.tsv a symlink out",
    ],
)
def test_index_json_names_no_build_outside_the_runs_index_folder(run, capsys, variant):
    run_dir, queries = run
    copy = _copy(run_dir, "run-" + "".join(c for c in variant if c.isalnum()))
    assert _embed(copy, queries, capsys)[0] == 0  # the copy's own index is read
    _tamper(copy, variant)
    code, err, _ = _embed(copy, queries, capsys)
    assert code == 1, (variant, err)
    assert err.startswith("error: ") and err.count("\n") == 1, (variant, err)
    assert "not read" in err, (variant, err)


@pytest.mark.parametrize("bad", BAD, ids=ascii)
def test_index_of_a_run_folder_whose_name_is_not_utf8(run, capsys, bad):
    run_dir, queries = run
    copy = _copy(run_dir, b"run-" + bad)
    shutil.rmtree(copy / "index")
    capsys.readouterr()
    assert index_main([str(copy)]) == 0, capsys.readouterr().err
    code, err, out = _embed(copy, queries, capsys)
    assert code == 0, err
    assert "not using" not in err, err  # the index, not a brute-force search
    with out.with_name(f"{out.stem}.neighbours.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 4 * 2, rows


# ------------------------------------------------------------------ names in text outputs
# Characters that end a line for some reader of a TSV (pandas, csv, str.splitlines, the
# TensorBoard projector) or that a terminal acts on.
LINE_BREAKS = {"CR": "\r", "LF": "\n", "tab": "\t", "VT": "\x0b", "FF": "\x0c", "FS": "\x1c"}
LINE_BREAKS |= {"GS": "\x1d", "RS": "\x1e", "NEL": "\x85", "LS": "\u2028", "PS": "\u2029"}
LINE_BREAKS |= {"ESC": "\x1b", "DEL": "\x7f"}


def _tsv_rows(path: Path) -> list[list[str]]:
    """The rows as every reader sees them: the same by str.splitlines, csv and pandas."""
    import pandas as pd

    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == len(lines) == len(pd.read_csv(path, sep="\t", quoting=3)) + 1
    assert len({len(r) for r in rows}) == 1, rows  # one width
    return rows


def test_names_with_line_breaks_keep_one_row_each(run, tmp_path, capsys):
    """embed's TSV, its neighbours' TSV and contact sheet, for files named with each
    character that breaks a line."""
    run_dir, queries = run
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    image = Image.open(next(queries.glob("*.png")))
    for name, char in LINE_BREAKS.items():
        image.save(gallery / f"{name}{char}x.png")
    out = tmp_path / "e.tsv"
    capsys.readouterr()
    assert embed_main([str(run_dir), str(gallery), "--out", str(out)]) == 0
    assert len(_tsv_rows(out)) == 1 + len(LINE_BREAKS)
    k = len(LINE_BREAKS)
    query = str(gallery / "CR\rx.png")
    argv = [str(run_dir), query, "--out", str(tmp_path / "q.tsv"), "--neighbours", str(k)]
    assert embed_main([*argv, "--gallery", str(gallery)]) == 0, capsys.readouterr().err
    assert len(_tsv_rows(tmp_path / "q.neighbours.tsv")) == 1 + k
    assert (tmp_path / "q.neighbours.png").is_file()


@pytest.mark.parametrize("length", [200, 220, 240, 255])
def test_a_long_file_name_is_written_atomically(tmp_path, length):
    """A name up to the file system's 255 bytes: its temporary file's name must fit too."""
    from tripletlab.io_utils import atomic_write_text

    path = tmp_path / ("n" * (length - 4) + ".txt")
    atomic_write_text(path, "x\n")
    assert path.read_text() == "x\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_an_out_too_long_for_its_side_files_is_one_line(run, tmp_path, capsys):
    run_dir, queries = run
    out = tmp_path / ("o" * 246 + ".tsv")  # 250 bytes; .neighbours.png makes it 261
    capsys.readouterr()
    argv = [str(run_dir), str(queries), "--out", str(out), "--neighbours", "2"]
    assert embed_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and err.count("\n") == 1 and "too long" in err, err


@pytest.mark.parametrize("where", ["run folder", "--out"])
def test_export_where_a_name_is_not_utf8(run, capsys, where):
    """TensorFlow writes a SavedModel only to a path that is UTF-8."""
    from tripletlab.cli.export import main as export_main

    run_dir, _ = run
    copy = _copy(run_dir, b"export-" + BAD[0] + where[-3:].encode())
    shutil.rmtree(copy / "index")
    out = copy.parent / os.fsdecode(b"model" + BAD[1]) if where == "--out" else None
    capsys.readouterr()
    assert export_main([str(copy), *(["--out", str(out)] if out else [])]) == 0, (
        capsys.readouterr().err
    )
    written = [p.name for p in (out or copy).rglob("*") if p.name == "saved_model.pb"]
    assert written == ["saved_model.pb"]


@pytest.mark.parametrize("bad", BAD, ids=ascii)
def test_training_into_a_folder_whose_name_is_not_utf8_is_one_error(tmp_path, bad):
    """TensorFlow's checkpoints take only UTF-8 paths: refused before training, one line,
    and recorded as the run's failure (was: a UnicodeEncodeError traceback from
    tf.train.CheckpointManager)."""
    from tripletlab.errors import TripletLabError

    folder = tmp_path / os.fsdecode(b"sweep" + bad) / "run"
    with pytest.raises(TripletLabError, match="not UTF-8") as err:
        tripletlab.train(tripletlab.compose([*TINY, "trainer.steps_per_epoch=2"]), folder)
    assert "\n" not in str(err.value)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "failed" and "not UTF-8" in summary["error"], summary
