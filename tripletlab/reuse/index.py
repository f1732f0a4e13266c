"""A nearest-neighbour index of a gallery's embeddings: ``tripletlab-index``.

``build_index(RUN_DIR, gallery=DIR | split="train", kind="exact" | "hnsw" | "ivfpq")`` embeds
the gallery with the run's model one batch at a time (a folder is streamed from disk as
:class:`~tripletlab.data.image_files.ImageFiles`; nothing but the index grows with the number
of images) and adds each batch to a FAISS index (the ``index`` extra, ``faiss-cpu``):

- ``exact``: ``IndexFlatL2``, every distance computed (what ``tripletlab-embed`` did);
- ``hnsw``: ``IndexHNSWFlat`` (M = 32), a graph searched with ``efSearch`` = EF_SEARCH;
- ``ivfpq``: ``IndexIVFPQ``, vectors compressed to 8-bit product-quantiser codes in
  ~4 sqrt(N) lists (trained on a random sample of the gallery), NPROBE lists searched.

Stored under the run folder's ``index/`` (:attr:`RunFolder.index_dir`)::

    index/
      index.json          the manifest: kind, count, dim, gallery, model digest, build folder
      build-<stamp>/      index.faiss, items.tsv (name, label and file of each vector, in
                          order: the name and label as text, a name's bytes that are not
                          UTF-8 escaped as \\xNN; the file percent-encoded, exactly as on disk)

A build writes its folder under a temporary name, renames it, then replaces ``index.json``
(atomically) to point at it, and only then removes older builds: a reader sees the old index
or the new one, never a partial one. The manifest records the model file's SHA-256, so an
index built before the run was trained further is not used.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.errors import ConfigError, TripletLabError, one_line
from tripletlab.io_utils import ESCAPE_ERRORS
from tripletlab.run_folder import RunFolder

log = logging.getLogger("tripletlab")

KINDS = ("exact", "hnsw", "ivfpq")
MANIFEST_FILE = "index.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.tsv"
HNSW_M = 32  # graph neighbours per node
HNSW_EF_CONSTRUCTION = 80
EF_SEARCH = 128  # HNSW: candidates kept while searching (recall against speed)
NPROBE = 32  # IVF-PQ: lists searched per query
PQ_BITS = 8
TRAIN_PER_LIST = 39  # FAISS warns below 39 training points per centroid


class IndexBuildError(TripletLabError):
    """An index cannot be built or read (or the ``index`` extra is missing)."""


def require_faiss():
    """The faiss module, or one error saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise IndexBuildError(
            "tripletlab-index needs faiss, which is not installed: pip install "
            "'tripletlab[index]' (or pip install faiss-cpu)"
        ) from None
    return faiss


def file_digest(path: Path) -> str:
    """SHA-256 of a file (the saved model: an index belongs to one model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- FAISS indexes


def ivf_lists(count: int) -> int:
    """IVF lists for ``count`` vectors: ~4 sqrt(N), and at least TRAIN_PER_LIST points each."""
    return max(1, min(int(4 * math.sqrt(max(count, 1))), count // TRAIN_PER_LIST))


def pq_subquantizers(dim: int) -> int:
    """Sub-vectors of the product quantiser: 4 dimensions each, or the largest divisor of
    ``dim`` that gives at least that many dimensions per sub-vector."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


def pq_bits(count: int) -> int:
    """Bits per product-quantiser code: PQ_BITS, fewer for a gallery too small to train
    2**bits centroids per sub-vector on TRAIN_PER_LIST points each."""
    return max(1, min(PQ_BITS, int(math.log2(max(count // TRAIN_PER_LIST, 2)))))


def new_index(kind: str, dim: int, count: int):
    """An empty FAISS index of ``kind`` for ``count`` vectors of ``dim`` (L2 distance)."""
    faiss = require_faiss()
    if kind == "exact":
        return faiss.IndexFlatL2(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index
    if kind == "ivfpq":
        quantizer = faiss.IndexFlatL2(dim)
        bits = pq_bits(count)
        return faiss.IndexIVFPQ(quantizer, dim, ivf_lists(count), pq_subquantizers(dim), bits)
    raise ConfigError(f"--kind {kind!r} is not valid; choose one of: {', '.join(KINDS)}")


def training_size(kind: str, count: int) -> int:
    """How many vectors ``kind`` is trained on before any is added (0: no training)."""
    if kind != "ivfpq":
        return 0
    # TRAIN_PER_LIST points per IVF list and per product-quantiser centroid; no more.
    return min(count, max(ivf_lists(count), 2 ** pq_bits(count)) * TRAIN_PER_LIST)


def set_search_parameters(index, kind: str) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = EF_SEARCH
    elif kind == "ivfpq":
        index.nprobe = min(NPROBE, index.nlist)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices [Q, k] and Euclidean distances [Q, k] (FAISS gives squared ones), nearest
    first; a missing neighbour (an index with fewer than k items) has index -1."""
    squared, idx = index.search(np.ascontiguousarray(queries, np.float32), int(k))
    return idx.astype(np.int64), np.sqrt(np.maximum(squared, 0.0)).astype(np.float64)


# --------------------------------------------------------------------------- galleries


@dataclass
class GallerySource:
    """What to index: images (an array or ImageFiles, in the model's shape), and per image a
    name and a label, or how to read them."""

    images: Any
    names: Sequence[str]
    labels: Sequence[str]
    description: dict  # recorded in the manifest; also how tripletlab-embed finds the match


def folder_source(folder: str | os.PathLike, shape: Sequence[int]) -> GallerySource:
    """A folder's images (recursively) streamed from disk, labelled by their sub-folder."""
    from tripletlab.data.image_files import ImageFiles
    from tripletlab.reuse.inputs import gallery_files

    root, paths = gallery_files(folder)
    images = ImageFiles(paths, *shape)
    names = [str(p.relative_to(root)) for p in paths]
    labels = [p.parent.name if p.parent != root else "" for p in paths]
    return GallerySource(images, names, labels, {"folder": str(root.resolve())})


def split_source(run_cfg, split: str, shape: Sequence[int]) -> GallerySource:
    """A split of the run's dataset (its images as training saw them)."""
    from tripletlab.reuse.run_config import load_data, split_arrays

    data = load_data(run_cfg, shape)
    images, labels = split_arrays(data, split)
    names = [f"{split}[{i}]" for i in range(len(images))]
    label_names = [data.class_names[int(y)] for y in labels]
    return GallerySource(images, names, label_names, {"split": split, "dataset": data.name})


def embed_in_batches(embedder, images):
    """Yield float32 embeddings [b, D] of ``images`` one batch at a time, as
    :func:`tripletlab.inference.embed_images` batches them (so they equal its output)."""
    from tripletlab.inference import embed_batches

    yield from embed_batches(
        lambda batch: embedder.embed(np.asarray(batch)), images, embedder.batch_size
    )


# --------------------------------------------------------------------------- storing


def _tsv_cell(value: str) -> str:
    return str(value).replace("\t", " ").replace("\n", " ")


def _file_cell(name: str) -> str:
    """A file's name, exactly (its bytes on disk, percent-encoded: ASCII, any name)."""
    from urllib.parse import quote

    return quote(os.fsencode(name), safe="/")


def _file_of(row: list[str]) -> str:
    """The file of an items.tsv row (an index built before the column: its name)."""
    from urllib.parse import unquote_to_bytes

    return os.fsdecode(unquote_to_bytes(row[2])) if len(row) > 2 else row[0]


def _write_index(faiss, index, path: Path) -> None:
    """faiss.write_index through a Python file: faiss takes only UTF-8 paths, and a folder's
    name may be any bytes."""
    with open(path, "wb") as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))


def _read_index(faiss, path: Path):
    """faiss.read_index through a Python file (any path, as :func:`_write_index`)."""
    with open(path, "rb") as f:
        return faiss.read_index(faiss.PyCallbackIOReader(f.read))


def _usual_permissions(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)


def _remove_old_builds(index_dir: Path, keep: str) -> None:
    """Remove builds older than ``keep`` (not a concurrent newer build's folder)."""
    for path in index_dir.glob("build-*"):
        if path.name < keep:
            shutil.rmtree(path, ignore_errors=True)


def build_index(
    run_dir: str | os.PathLike,
    gallery: str | os.PathLike | None = None,
    split: str | None = None,
    kind: str = "hnsw",
    overrides: Sequence[str] = (),
) -> dict:
    """Embed the gallery (a folder, or a split of the run's dataset: train by default) and
    store its index under the run folder; returns the manifest."""
    from tripletlab.inference import SPLITS, open_model
    from tripletlab.io_utils import atomic_write_json
    from tripletlab.reuse.run_config import load_config

    folder = RunFolder.existing(run_dir)
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind!r} is not valid; choose one of: {', '.join(KINDS)}")
    if gallery is not None and split is not None:
        raise ConfigError("give either --gallery DIR or --split, not both")
    if gallery is None and split is None:
        split = "train"
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not valid; choose one of: {', '.join(SPLITS)}")
    faiss = require_faiss()
    run_cfg = load_config(folder.path, overrides)
    if gallery is not None:
        from tripletlab.reuse.inputs import gallery_files

        gallery_files(gallery)  # a missing or empty folder fails before the model loads
    model_path = folder.require_model()
    embedder = open_model(folder, run_cfg.cfg)
    shape = embedder.input_shape
    source = (
        folder_source(gallery, shape)
        if gallery is not None
        else split_source(run_cfg, split, shape)
    )
    count, dim = len(source.images), embedder.embedding_size
    index = new_index(kind, dim, count)

    started = time.perf_counter()
    sample = training_size(kind, count)
    if sample:
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(count, size=sample, replace=False))
        vectors = np.concatenate(list(embed_in_batches(embedder, source.images[chosen])))
        log.info("training the %s index on %d of %d embeddings", kind, sample, count)
        index.train(vectors)
        del vectors

    index_dir = folder.index_dir
    index_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}-{os.getpid()}"
    build_name = f"build-{stamp}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{build_name}.tmp-", dir=index_dir))
    try:
        _usual_permissions(tmp)
        with open(
            tmp / ITEMS_FILE, "w", newline="", encoding="utf-8", errors=ESCAPE_ERRORS
        ) as items:
            writer = csv.writer(items, delimiter="\t", lineterminator="\n")
            writer.writerow(["name", "label", "file"])
            added = 0
            for embeddings in embed_in_batches(embedder, source.images):
                index.add(np.ascontiguousarray(embeddings, np.float32))
                for i in range(added, added + len(embeddings)):
                    name = source.names[i]
                    writer.writerow(
                        [_tsv_cell(name), _tsv_cell(source.labels[i]), _file_cell(name)]
                    )
                added += len(embeddings)
                log.debug("indexed %d of %d", added, count)
        if added != count or index.ntotal != count:
            raise RuntimeError(f"indexed {index.ntotal} of {count} gallery images")
        try:
            _write_index(faiss, index, tmp / INDEX_FILE)
        except (RuntimeError, OSError) as exc:  # a full disk, as faiss or Python says it
            raise IndexBuildError(
                f"cannot write the index in {index_dir}: {one_line(exc)}"
            ) from None
        seconds = time.perf_counter() - started
        os.replace(tmp, index_dir / build_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest = {
        "kind": kind,
        "count": count,
        "dim": dim,
        "gallery": source.description,
        "build": build_name,
        "model_sha256": file_digest(model_path),
        "faiss": faiss.__version__,
        "build_seconds": round(seconds, 3),
        "image_shape": list(shape),
        "parameters": _parameters(index, kind),
    }
    atomic_write_json(index_dir / MANIFEST_FILE, manifest)
    _remove_old_builds(index_dir, build_name)
    log.debug("indexed %d images (%s) in %.1fs: %s", count, kind, seconds, index_dir)
    return {**manifest, "path": str(index_dir)}


def _parameters(index, kind: str) -> dict:
    if kind == "hnsw":
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": EF_SEARCH}
    if kind == "ivfpq":
        pq = index.pq
        return {"nlist": int(index.nlist), "m": int(pq.M), "nbits": int(pq.nbits), "nprobe": NPROBE}
    return {}


# --------------------------------------------------------------------------- reading


@dataclass
class NeighbourIndex:
    """A stored index: search it with embeddings [Q, D]; names and labels per item."""

    manifest: dict
    index: Any
    names: list[str]
    labels: list[str]
    files: list[str]  # the gallery's files, as on disk, relative to its folder

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search(self.index, queries, min(int(k), len(self.names)))

    def serves(self, gallery: str | os.PathLike | None, split: str = "train") -> bool:
        """Whether this index is of ``gallery`` (a folder) or, without one, of ``split``."""
        described = self.manifest.get("gallery", {})
        if gallery is None:
            return described.get("split") == split
        return described.get("folder") == str(Path(gallery).expanduser().resolve())


def read_manifest(folder: RunFolder) -> dict | None:
    import json

    try:
        manifest = json.loads((folder.index_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def build_folder(folder: RunFolder, manifest: dict) -> Path:
    """The build ``index.json`` names: a ``build-*`` folder directly inside the run's own
    ``index/``, also once symlinks are resolved. Anything else (``../../x``, an absolute
    path, a symlink that leads out) is refused: a run folder may come from someone else."""
    name = manifest.get("build")
    index_dir = folder.index_dir
    build = index_dir / str(name)
    try:  # resolve() raises ValueError for a NUL byte, and a lone surrogate has no bytes
        inside = (
            isinstance(name, str)
            and name.startswith("build-")
            and Path(name).name == name
            and build.resolve().parent == index_dir.resolve()
        )
    except (OSError, ValueError):
        inside = False
    if not inside:
        raise IndexBuildError(
            f"{index_dir / MANIFEST_FILE} names the build {name!r}, which is not a build-* "
            f"folder inside {index_dir}: it is not read; rebuild the index with tripletlab-index"
        )
    # index/ itself, and the build's files, may not be symlinks that lead out either.
    files = [build / INDEX_FILE, build / ITEMS_FILE]
    if index_dir.resolve().parent != folder.path.resolve() or any(
        f.resolve().parent != build.resolve() for f in files
    ):
        raise IndexBuildError(
            f"the index in {index_dir} leads out of the run folder through a symlink (index/, "
            f"{INDEX_FILE} or {ITEMS_FILE}): it is not read; rebuild the index with "
            "tripletlab-index"
        )
    return build


def open_index(folder: RunFolder) -> NeighbourIndex | None:
    """The run's index, or None when it has none, when faiss is missing, or when the model
    changed since it was built (each explained in the log)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    try:
        faiss = require_faiss()
    except IndexBuildError as err:
        log.warning("not using %s: %s", folder.index_dir, err)
        return None
    if folder.model_path.is_file() and manifest.get("model_sha256") != file_digest(
        folder.model_path
    ):
        log.warning(
            "not using the index in %s: the run's model changed since it was built; rebuild "
            "it with tripletlab-index",
            folder.index_dir,
        )
        return None
    for _ in range(2):  # a rebuild may replace the build between reading and opening it
        build = build_folder(folder, manifest)
        try:
            index = _read_index(faiss, build / INDEX_FILE)
            with open(build / ITEMS_FILE, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f, delimiter="\t"))[1:]
            break
        except (OSError, RuntimeError):
            manifest = read_manifest(folder) or manifest
    else:
        raise IndexBuildError(f"cannot read the index in {folder.index_dir}; rebuild it")
    if len(rows) != index.ntotal:
        raise IndexBuildError(
            f"the index in {build} has {index.ntotal} vectors but {len(rows)} items; rebuild it"
        )
    set_search_parameters(index, manifest.get("kind", "exact"))
    names, labels = [r[0] for r in rows], [r[1] for r in rows]
    return NeighbourIndex(manifest, index, names, labels, [_file_of(r) for r in rows])
