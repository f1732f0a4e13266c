"""A reopened index searches with the search parameters its manifest records (HNSW's
efSearch, IVF-PQ's nprobe), not FAISS's defaults (efSearch 16, nprobe 1): checked on the
opened index and by recall@10 on 3,000 random unit vectors (D = 32), where the defaults
lose recall (measured: HNSW 0.89 against 1.00, IVF-PQ 0.16 against 0.50).

The build is written with the module's own index and manifest functions and file names;
only the embedding of a gallery by a model (test_index.py) is left out."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from tripletlab.reuse import index as idx  # noqa: E402
from tripletlab.run_folder import RunFolder  # noqa: E402

COUNT, DIM, K = 3000, 32, 10


def _unit(rng, n):
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write_build(folder: RunFolder, kind: str, gallery: np.ndarray) -> None:
    import faiss

    index = idx.new_index(kind, DIM, len(gallery))
    sample = idx.training_size(kind, len(gallery))
    if sample:
        index.train(gallery[np.random.default_rng(0).choice(len(gallery), sample, False)])
    index.add(gallery)
    build = folder.index_dir / "build-1"
    build.mkdir(parents=True)
    faiss.write_index(index, str(build / idx.INDEX_FILE))
    with open(build / idx.ITEMS_FILE, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["name", "label"])
        writer.writerows([f"v{i}.png", "0"] for i in range(len(gallery)))
    manifest = {"kind": kind, "count": len(gallery), "dim": DIM, "build": "build-1"}
    manifest["parameters"] = idx._parameters(index, kind)
    (folder.index_dir / idx.MANIFEST_FILE).write_text(json.dumps(manifest))


def _recall(found, exact):
    return np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)])


@pytest.mark.parametrize(
    ("kind", "parameter", "floor"), [("hnsw", "efSearch", 0.97), ("ivfpq", "nprobe", 0.4)]
)
def test_a_reopened_index_searches_with_the_parameters_in_its_manifest(
    tmp_path, kind, parameter, floor
):
    import faiss

    rng = np.random.default_rng(0)
    gallery, queries = _unit(rng, COUNT), _unit(rng, 200)
    exact = np.argsort(((queries[:, None] - gallery[None]) ** 2).sum(-1), axis=1)[:, :K]
    folder = RunFolder(tmp_path)
    _write_build(folder, kind, gallery)

    opened = idx.open_index(folder)
    recorded = opened.manifest["parameters"][parameter]
    searched = opened.index.hnsw.efSearch if kind == "hnsw" else opened.index.nprobe
    assert searched == recorded
    recall = _recall(opened.search(queries, K)[0], exact)
    # The same file read as FAISS leaves it: the parameters are what make the recall.
    plain = faiss.read_index(str(folder.index_dir / "build-1" / idx.INDEX_FILE))
    plain_recall = _recall(plain.search(queries, K)[1], exact)
    assert recall >= floor, (recall, plain_recall)
    assert recall >= plain_recall + 0.05, (recall, plain_recall)


def test_index_sizes_follow_the_gallery():
    """IVF lists ~4 sqrt(N), at least TRAIN_PER_LIST (39) training points each; PQ bits 8,
    fewer for a gallery too small to train 2**bits centroids; what IVF-PQ trains on."""
    assert [idx.ivf_lists(n) for n in (1, 100, 3000, 40_000, 10**6)] == [1, 2, 76, 800, 4000]
    assert [idx.pq_bits(n) for n in (10, 3000, 5000, 10**6)] == [1, 6, 7, 8]
    assert idx.training_size("hnsw", 10**6) == idx.training_size("exact", 10**6) == 0
    assert idx.training_size("ivfpq", 3000) == 76 * 39
    assert idx.training_size("ivfpq", 10**6) == 4000 * 39
    assert idx.training_size("ivfpq", 50) == 50  # never more than the gallery
