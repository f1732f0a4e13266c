"""Fingerprints of a dataset's files: cheap to take, and a change names what changed.

A run folder records the fingerprint of its training data (:mod:`tripletlab.run_record`),
and a rerun with other data is refused. Nothing is decoded:

- an IDX file: its size, its header (magic number and shape, read through gzip) and its
  SHA-256 up to :data:`CONTENT_HASH_LIMIT` bytes;
- a folder of images: per sub-folder (two levels deep) the number of files, their bytes and
  a SHA-256 of their sorted names and sizes, and of their content too while the whole
  folder is at most :data:`CONTENT_HASH_LIMIT` bytes; listing files at its top (CUB's
  ``images.txt``, ``cars_annos.mat``) always by content;
- one bundled file (scikit-learn's digits): its size and SHA-256.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Iterable
from pathlib import Path

# Past this many bytes a folder's images are fingerprinted by names and sizes only.
CONTENT_HASH_LIMIT = 64 * 2**20
# Top-level files up to this size (listings, annotation tables) are hashed whatever the total.
LISTING_LIMIT = 16 * 2**20
_CHUNK = 2**20


def file_digest(path: Path) -> str:
    """The SHA-256 of the file's content, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def of_idx_file(path: Path) -> dict:
    """{bytes, header, sha256}: the size on disk, ``magic 0x00000803, shape 60000x28x28``
    and, up to :data:`CONTENT_HASH_LIMIT` bytes (Fashion-MNIST's largest is 26 MB), the
    content's SHA-256."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            ndim = head[3] if len(head) == 4 else 0
            dims = f.read(4 * ndim)
        magic = struct.unpack(">I", head)[0]
        shape = "x".join(str(d) for d in struct.unpack(f">{ndim}I", dims))
        header = f"magic 0x{magic:08x}, shape {shape}"
    except (OSError, EOFError, struct.error):  # corrupt: loading names the problem
        header = "unreadable"
    size = path.stat().st_size
    found = {"bytes": size, "header": header}
    if size <= CONTENT_HASH_LIMIT:
        found["sha256"] = file_digest(path)
    return found


def of_bundled_file(path: Path) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_digest(path)}


def _files(root: Path, suffixes: Iterable[str] | None) -> list[tuple[str, int, Path]]:
    """(relative name, size, path) of every file under ``root`` that is not hidden, with
    one of ``suffixes`` (any case) if given; sorted by name."""
    wanted = None if suffixes is None else {s.lower() for s in suffixes}
    found = []
    # Symbolic links to folders are followed, as loading follows them (a class folder linked
    # in from elsewhere is training data); a link back to a folder above it is not.
    above: dict[str, frozenset[str]] = {}
    for parent, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(parent)
        chain = above.get(parent, frozenset())
        if real in chain:
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for d in dirs:
            above[os.path.join(parent, d)] = chain | {real}
        for name in names:
            if name.startswith(".") or (wanted and Path(name).suffix.lower() not in wanted):
                continue
            path = Path(parent) / name
            rel = path.relative_to(root).as_posix()
            found.append((rel, path.stat().st_size, path))
    return sorted(found)


def of_folder(root: Path, suffixes: Iterable[str] | None = None) -> dict:
    """{files, bytes, content_hashed, groups: {sub-folder: {files, bytes, sha256}},
    listings: {name: sha256}} for the folder ``root`` (see the module docstring)."""
    files = _files(root, suffixes)
    total = sum(size for _, size, _ in files)
    with_content = total <= CONTENT_HASH_LIMIT
    groups: dict[str, dict] = {}
    digests: dict[str, hashlib._Hash] = {}
    listings = {}
    for rel, size, path in files:
        parts = rel.split("/")
        if len(parts) == 1 and size <= LISTING_LIMIT:
            listings[rel] = file_digest(path)
            continue
        key = "/".join(parts[:-1][:2]) or "."
        group = groups.setdefault(key, {"files": 0, "bytes": 0})
        group["files"] += 1
        group["bytes"] += size
        digest = digests.setdefault(key, hashlib.sha256())
        digest.update(f"{rel}\t{size}\n".encode("utf-8", "surrogateescape"))
        if with_content:
            digest.update(file_digest(path).encode())
    for key, digest in digests.items():
        groups[key]["sha256"] = digest.hexdigest()[:16]
    return {
        "files": len(files),
        "bytes": total,
        "content_hashed": with_content,
        "groups": groups,
        "listings": listings,
    }
