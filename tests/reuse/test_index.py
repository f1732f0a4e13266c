"""tripletlab-index, and tripletlab-embed --neighbours searching the index it stores.

The expected neighbours are tripletlab.reuse.embed.nearest's exact search (float64 brute
force) over the run's own embeddings (Embedder, the path training evaluated with).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tripletlab
from tests.helpers import TINY
from tripletlab.cli.embed import main as embed_main
from tripletlab.cli.index import main as index_main

pytestmark = pytest.mark.e2e

K = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tripletlab.data import load_dataset

    run_dir = tmp_path_factory.mktemp("run")
    cfg = tripletlab.compose([*TINY, "trainer.mixed_precision=off"])
    tripletlab.train(cfg, run_dir)
    return run_dir, load_dataset(cfg.dataset)


@pytest.fixture(scope="module")
def queries(run, tmp_path_factory):
    """Six test images as PNG files in the model's size."""
    _, data = run
    folder = tmp_path_factory.mktemp("queries")
    for i in range(6):
        Image.fromarray(data.x_test[i][..., 0]).save(folder / f"q{i}.png")
    return folder


@pytest.fixture(scope="module")
def gallery(run, tmp_path_factory):
    """60 test images (8x8 grey, the model's size) in class sub-folders."""
    _, data = run
    root = tmp_path_factory.mktemp("gallery")
    for i in range(6, 66):
        folder = root / str(int(data.y_test[i]))
        folder.mkdir(exist_ok=True)
        Image.fromarray(data.x_test[i][..., 0]).save(folder / f"{i}.png")
    return root


def _embedder(run_dir):
    from tripletlab.inference import Embedder, load_model
    from tripletlab.run_folder import RunFolder

    return Embedder(load_model(RunFolder(run_dir)), batch_size=64)


def _exact(run_dir, query_images, gallery_images):
    from tripletlab.reuse.embed import nearest

    embedder = _embedder(run_dir)
    return nearest(embedder.embed(query_images), embedder.embed(gallery_images), K)


def _neighbour_rows(out: Path) -> list[dict]:
    with out.with_name(f"{out.stem}.neighbours.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _open(run_dir):
    from tripletlab.reuse.index import open_index
    from tripletlab.run_folder import RunFolder

    return open_index(RunFolder(run_dir))


def test_exact_index_of_the_train_split_is_what_embed_searches(run, queries, tmp_path, capsys):
    run_dir, data = run
    assert index_main([str(run_dir), "--split", "train", "--kind", "exact"]) == 0
    assert f"indexed {len(data.x_train)} images of the train split" in capsys.readouterr().out
    index = _open(run_dir)
    assert index.manifest["kind"] == "exact" and index.names[3] == "train[3]"
    assert index.labels[3] == data.class_names[int(data.y_train[3])]

    expected_idx, expected_dist = _exact(run_dir, data.x_test[:6], data.x_train)
    out = tmp_path / "q.npy"
    assert embed_main([str(run_dir), str(queries), "--out", str(out), "--neighbours", str(K)]) == 0
    printed = capsys.readouterr().out
    assert "exact index" in printed  # the table says which search answered
    rows = _neighbour_rows(out)
    assert len(rows) == 6 * K
    for q in range(6):
        mine = rows[q * K : (q + 1) * K]
        assert [r["neighbour"] for r in mine] == [f"train[{i}]" for i in expected_idx[q]]
        np.testing.assert_allclose(
            [float(r["distance"]) for r in mine], expected_dist[q], rtol=0, atol=1e-4
        )


def test_hnsw_and_ivfpq_find_the_exact_neighbours(run):
    from tripletlab.reuse.index import build_index

    run_dir, data = run
    queries = _embedder(run_dir).embed(data.x_test[:200])
    expected, _ = _exact(run_dir, data.x_test[:200], data.x_train)
    recalls = {}
    for kind in ("hnsw", "ivfpq"):
        manifest = build_index(run_dir, split="train", kind=kind)
        # What it returns and records: where the index is, which faiss built it.
        import faiss

        from tripletlab.run_folder import RunFolder

        index_dir = RunFolder(run_dir).index_dir
        assert manifest["path"] == str(index_dir) and manifest["faiss"] == faiss.__version__
        recorded = json.loads((index_dir / "index.json").read_text())
        assert recorded["faiss"] == faiss.__version__
        found, _ = _open(run_dir).search(queries, K)
        assert found.shape == (200, K) and found.min() >= 0
        hits = [len(set(f) & set(e)) for f, e in zip(found, expected, strict=True)]
        recalls[kind] = sum(hits) / expected.size
    assert recalls["hnsw"] >= 0.95, recalls
    assert recalls["ivfpq"] >= 0.3, recalls  # compressed codes: approximate by design


def test_folder_index_serves_embed_on_that_folder_only(run, queries, gallery, tmp_path, capsys):
    run_dir, data = run
    assert index_main([str(run_dir), "--gallery", str(gallery), "--kind", "hnsw"]) == 0
    capsys.readouterr()
    index = _open(run_dir)
    assert len(index.names) == 60 and all(n.endswith(".png") for n in index.names)
    assert all(
        Path(n).parent.name == label for n, label in zip(index.names, index.labels, strict=True)
    )

    # The same folder: the index answers, with the neighbours of an exact search.
    out = tmp_path / "q.tsv"
    argv = [str(run_dir), str(queries), "--out", str(out), "--neighbours", str(K)]
    assert embed_main([*argv, "--gallery", str(gallery)]) == 0
    assert "hnsw index" in capsys.readouterr().out
    gallery_images = np.stack([np.asarray(Image.open(gallery / n))[..., None] for n in index.names])
    expected, _ = _exact(run_dir, data.x_test[:6], gallery_images)
    rows = _neighbour_rows(out)
    for q in range(6):
        assert [r["neighbour"] for r in rows[q * K : (q + 1) * K]] == [
            index.names[i] for i in expected[q]
        ]
    assert out.with_name("q.neighbours.png").is_file()

    # The train split is not what was indexed: exact search of it.
    assert embed_main([*argv]) == 0
    text = capsys.readouterr().out
    searched = text.split("nearest images in ", 1)[1].splitlines()[0]
    assert searched.startswith("digits training split") and "index" not in searched


def test_rebuild_replaces_the_index_and_a_failed_one_leaves_it(run, gallery, tmp_path, capsys):
    run_dir, _ = run
    assert index_main([str(run_dir), "--split", "train", "--kind", "exact"]) == 0
    first = json.loads((run_dir / "index" / "index.json").read_text())["build"]
    assert index_main([str(run_dir), "--split", "train", "--kind", "exact"]) == 0
    second = json.loads((run_dir / "index" / "index.json").read_text())["build"]
    assert second != first
    assert {p.name for p in (run_dir / "index").iterdir()} == {"index.json", second}

    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    for name in sorted(p.name for p in (gallery / "1").iterdir())[:3]:
        (broken / "a" / name).write_bytes((gallery / "1" / name).read_bytes())
    (broken / "a" / "zz.png").write_bytes(b"not a png")
    capsys.readouterr()
    assert index_main([str(run_dir), "--gallery", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "zz.png" in err and err.count("\n") == 1, err
    assert json.loads((run_dir / "index" / "index.json").read_text())["build"] == second
    assert {p.name for p in (run_dir / "index").iterdir()} == {"index.json", second}


def test_an_index_of_another_model_is_not_used(run, tmp_path, capsys):
    from tripletlab.reuse.index import build_index

    run_dir, _ = run
    build_index(run_dir, split="train", kind="exact")
    manifest_path = run_dir / "index" / "index.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model_sha256"] = "0" * 64  # as after training the run further
    manifest_path.write_text(json.dumps(manifest))
    assert _open(run_dir) is None


def test_each_failure_is_one_line(run, gallery, tmp_path, capsys, monkeypatch):
    run_dir, _ = run
    cases = [
        ([str(run_dir), "--kind", "lsh"], "--kind 'lsh' is not valid"),
        ([str(run_dir), "--gallery", str(gallery), "--split", "train"], "not both"),
        ([str(run_dir), "--split", "val"], "--split 'val' is not valid"),
        ([str(run_dir), "--gallery", str(tmp_path / "none")], "is not a folder"),
        ([str(tmp_path)], "is not a run folder"),
    ]
    for argv, message in cases:
        assert index_main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if the extra were not installed
    assert index_main([str(run_dir)]) == 1
    assert "pip install 'tripletlab[index]'" in capsys.readouterr().err


def test_bench_index_sets_the_indexes_beside_exact_search(tmp_path):
    from tripletlab.bench.index import main as bench_main
    from tripletlab.bench.index import measure, unit_vectors

    rows = measure("random", unit_vectors(3000, 16, 1), unit_vectors(200, 16, 2), 10, 100)
    by_method = {r["method"]: r for r in rows}
    numpy_row = by_method["exact, numpy float64 (tripletlab-embed before)"]
    faiss_row = by_method["exact, FAISS IndexFlatL2 float32 (--kind exact)"]
    assert numpy_row["speedup"] == 1.0 and numpy_row["queries"] == 100
    assert faiss_row["recall"] >= 0.99  # float32 against float64: the same neighbours
    assert by_method["hnsw (--kind default settings)"]["recall"] >= 0.9
    assert len([r for r in rows if r["method"].startswith("ivfpq")]) == 3
    assert all(r["qps"] > 0 for r in rows)

    md = tmp_path / "bench.md"
    assert bench_main(["--count", "2000", "--queries", "50", "--dim", "8", "--md", str(md)]) == 0
    text = md.read_text()
    assert "random unit vectors 2,000 x 8" in text and "shared with other sessions" in text


def _escaping_builds(run_dir: Path, outside: Path) -> list:
    """What index.json may name instead of its own build: paths that leave index/, a
    symlink inside it that leads out, and values that are not a build's name. ``outside``
    holds a real copy of the build, so following the path would work."""
    index_dir = run_dir / "index"
    build = json.loads((index_dir / "index.json").read_text())["build"]
    copy = outside / build
    if not copy.exists():
        import shutil

        shutil.copytree(index_dir / build, copy)
    link = index_dir / "build-zz-link"
    link.unlink(missing_ok=True)
    link.symlink_to(copy, target_is_directory=True)
    up = Path(*[".."] * len(index_dir.resolve().parts))
    relative = os.path.relpath(copy, index_dir)
    return [
        relative,  # ../../..., out of the run folder
        str(copy),  # absolute
        f"{build}/../{relative}",  # starts like a build, then leaves
        str(up / str(copy).lstrip("/")),  # ../../ up to the root and down again
        "build-zz-link",  # a symlink in index/ that leads out
        ".",
        "..",
        "",
        None,
        7,
        ["build-x"],
        f"{build}\n../x",
    ]


def test_index_json_names_only_a_build_inside_the_runs_index_folder(run, queries, tmp_path, capsys):
    """A run folder may come from someone else: every other build is refused, one line."""
    from tripletlab.reuse.index import build_index

    run_dir, _ = run
    build_index(run_dir, split="train", kind="exact")
    manifest_path = run_dir / "index" / "index.json"
    manifest = json.loads(manifest_path.read_text())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = tmp_path / "q.tsv"
    argv = [str(run_dir), str(queries), "--out", str(out), "--neighbours", "2"]
    try:
        for value in _escaping_builds(run_dir, outside):
            manifest_path.write_text(json.dumps({**manifest, "build": value}))
            capsys.readouterr()
            assert embed_main(argv) == 1, value
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1, (value, err)
            assert "index.json names the build" in err and "not read" in err, err
    finally:
        manifest_path.write_text(json.dumps(manifest))
        (run_dir / "index" / "build-zz-link").unlink(missing_ok=True)
    assert embed_main(argv) == 0  # its own build is read
