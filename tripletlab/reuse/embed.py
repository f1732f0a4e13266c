"""Embed images with a trained run, and find their nearest images: ``tripletlab-embed``.

``tripletlab-embed RUN_DIR INPUT... --out FILE [--neighbours K [--gallery DIR]] [key=value ...]``

INPUT is image files or folders (searched recursively; hidden files and files without an
image extension are skipped). Each image gets the preprocessing of training, the one
function of :mod:`tripletlab.data.preprocess`: converted to the model's input shape (the
run's dataset image size and channels: resized bilinearly with antialiasing, colour <-> grey
with PIL's luma formula), scaled to [0, 1], embedded in batches of
``eval.batch_size``. ``--out`` is ``.npy`` (float32 [N, D], inputs in order: as given,
folders' files sorted) or ``.tsv`` (a header, then the path and the D values per line).

With ``--neighbours K`` each input's K nearest images (Euclidean distance) are listed, in
the training split of the run's dataset or in a ``--gallery`` folder (labels from the
sub-folder holding each image, if any), searched in the run's index when ``tripletlab-index``
built one of that gallery (:mod:`tripletlab.reuse.index`), exactly otherwise: printed as a
table, written next to ``--out`` as
``<out>.neighbours.tsv``, and drawn as a contact sheet ``<out>.neighbours.png`` (one row per
input: the input, then its neighbours with their label and distance).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tripletlab.errors import ConfigError
from tripletlab.inference import open_model
from tripletlab.io_utils import NAME_MAX, escape_name
from tripletlab.reuse import run_config
from tripletlab.reuse.inputs import find_images, gallery_files
from tripletlab.run_folder import RunFolder

log = logging.getLogger("tripletlab")

OUT_SUFFIXES = (".npy", ".tsv")
MAX_SHEET_ROWS = 100  # inputs drawn on the contact sheet (the TSV has them all)
MAX_PRINTED_QUERIES = 50  # inputs whose neighbours are printed (the TSV has them all)
TILE = 96  # contact sheet: image side in pixels
CAPTION = 26  # contact sheet: caption height under each image
PAD = 4
# What ends a line for some reader of a TSV (csv, pandas, str.splitlines, TensorBoard's
# projector) or what a terminal acts on: C0 and C1 controls, DEL, U+2028 and U+2029.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# --------------------------------------------------------------------------- inputs


def read_images(paths: Sequence[Path], shape: Sequence[int]) -> np.ndarray:
    """Decode ``paths`` to uint8 [N, H, W, C] = shape; an unreadable file is an error."""
    from tripletlab.data import decode_image

    h, w, c = (int(s) for s in shape)
    out = np.empty((len(paths), h, w, c), np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(Path(path), c, (h, w))  # DataError names the file
    return out


@dataclass
class Gallery:
    """Images to search, with a label (may be "") and a name per image."""

    images: np.ndarray  # uint8 [M, H, W, C]
    labels: list[str]
    names: list[str]
    source: str


def folder_gallery(folder: str | Path, shape: Sequence[int]) -> Gallery:
    root, paths = gallery_files(folder)
    labels = [p.parent.name if p.parent != root else "" for p in paths]
    names = [str(p.relative_to(root)) for p in paths]
    return Gallery(read_images(paths, shape), labels, names, str(root))


def train_gallery(run_cfg, shape: Sequence[int]) -> Gallery:
    data = run_config.load_data(run_cfg, shape)
    labels = [data.class_names[int(y)] for y in data.y_train]
    names = [f"train[{i}]" for i in range(len(labels))]
    return Gallery(data.x_train, labels, names, f"{data.name} training split ({data.source})")


def indexed_gallery(index, run_cfg, shape: Sequence[int]) -> Gallery:
    """The gallery of the run's index (:mod:`tripletlab.reuse.index`): its names and labels
    as stored; its images (for the contact sheet) read only when drawn: a folder's files
    stay on disk, a split is the run's dataset."""
    from tripletlab.data.image_files import ImageFiles

    described = index.manifest["gallery"]
    kind = index.manifest["kind"]
    if "folder" in described:
        root = Path(described["folder"])
        images = ImageFiles([root / name for name in index.files], *shape)
        source = f"{root} ({kind} index)"
    else:
        data = run_config.load_data(run_cfg, shape)
        images, _ = run_config.split_arrays(data, described["split"])
        source = f"{data.name} {described['split']} split ({data.source}; {kind} index)"
    return Gallery(images, index.labels, index.names, source)


# --------------------------------------------------------------------------- neighbours


def nearest(
    queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Indices [Q, k] and Euclidean distances [Q, k] of each query's k nearest gallery items.

    Nearest first; equal distances keep the gallery order.
    """
    q_all = np.asarray(queries, np.float64)
    g = np.asarray(gallery, np.float64)
    k = min(int(k), len(g))
    g_sq = np.einsum("ij,ij->i", g, g)
    idx_out = np.empty((len(q_all), k), np.int64)
    dist_out = np.empty((len(q_all), k), np.float64)
    for start in range(0, len(q_all), chunk):
        q = q_all[start : start + chunk]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + g_sq[None, :] - 2.0 * (q @ g.T)
        np.maximum(d2, 0.0, out=d2)
        cand = (
            np.argpartition(d2, k - 1, axis=1)[:, :k]
            if k < len(g)
            else np.tile(np.arange(len(g)), (len(q), 1))
        )
        cand_d = np.take_along_axis(d2, cand, axis=1)
        order = np.lexsort((cand, cand_d), axis=1)
        idx_out[start : start + len(q)] = np.take_along_axis(cand, order, axis=1)
        dist_out[start : start + len(q)] = np.sqrt(np.take_along_axis(cand_d, order, axis=1))
    return idx_out, dist_out


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 has one bitmap font
        return ImageFont.load_default()


def _fit_text(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[1:] if "/" in text else text[:-1]  # paths keep their end (the file name)
    return "…" + text if "/" in text else text + "…"


def _tile(img: np.ndarray):
    from PIL import Image

    from tripletlab.data.preprocess import conform_image

    h, w = img.shape[:2]
    scale = TILE / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return Image.fromarray(conform_image(img, size, 3))  # the one resize


def contact_sheet(
    query_images: np.ndarray,
    query_names: Sequence[str],
    gallery: Gallery,
    idx: np.ndarray,
    dist: np.ndarray,
) -> bytes:
    """PNG bytes: one row per query (at most MAX_SHEET_ROWS): the query, then its neighbours."""
    from PIL import Image, ImageDraw

    rows = min(len(query_images), MAX_SHEET_ROWS)
    k = idx.shape[1]
    cell_w, cell_h = TILE + 2 * PAD, TILE + CAPTION + 2 * PAD
    gap = 3 * PAD  # between the query and its neighbours
    sheet = Image.new("RGB", (cell_w * (k + 1) + gap, cell_h * rows), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font()

    def put(img, x, y, lines, colour="black"):
        tile = _tile(img)
        sheet.paste(tile, (x + PAD + (TILE - tile.width) // 2, y + PAD + (TILE - tile.height) // 2))
        for j, line in enumerate(lines):
            text = _fit_text(draw, _tsv_cell(escape_name(line)), font, TILE)
            draw.text((x + PAD, y + PAD + TILE + 1 + 12 * j), text, fill=colour, font=font)

    for r in range(rows):
        y = r * cell_h
        put(query_images[r], 0, y, [Path(query_names[r]).name, "query"], colour="navy")
        for j in range(k):
            g = int(idx[r, j])
            x = cell_w * (j + 1) + gap
            put(
                gallery.images[g],
                x,
                y,
                [gallery.labels[g] or gallery.names[g], f"d={dist[r, j]:.3f}"],
            )
        if r:
            draw.line([(0, y), (sheet.width, y)], fill=(220, 220, 220))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- outputs


def _sidecar(out: Path, suffix: str) -> Path:
    return out.with_name(f"{out.stem}.neighbours{suffix}")


def write_embeddings(out: Path, names: Sequence[str], emb: np.ndarray) -> Path:
    from tripletlab.io_utils import atomic_write_bytes, atomic_write_text

    if out.suffix.lower() == ".npy":
        buf = io.BytesIO()
        np.save(buf, emb.astype(np.float32))
        return atomic_write_bytes(out, buf.getvalue())
    lines = ["\t".join(["path", *(f"e{i}" for i in range(emb.shape[1]))])]
    for name, row in zip(names, emb, strict=True):
        clean = _tsv_cell(name)
        lines.append("\t".join([clean, *(repr(float(v)) for v in row)]))
    return atomic_write_text(out, "\n".join(lines) + "\n")


def _tsv_cell(value) -> str:
    """One TSV cell, one line: tabs, line breaks and other controls as spaces."""
    return _CONTROL.sub(" ", str(value))


def embed_inputs(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    neighbours: int = 0,
    gallery_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    """Embed ``inputs`` with the run's model into ``out``; optionally their neighbours."""
    from tripletlab.io_utils import atomic_write_bytes, atomic_write_text

    RunFolder.existing(run_dir)  # first: the most basic mistake gets the first message
    out = Path(out).expanduser()
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise ConfigError(f"--out {out}: use a file name ending in .npy or .tsv")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name ending in .npy or .tsv")
    if neighbours < 0:
        raise ConfigError(f"--neighbours {neighbours} must be >= 1")
    written = [out, _sidecar(out, ".tsv"), _sidecar(out, ".png")] if neighbours else [out]
    for path in written:
        if len(os.fsencode(path.name)) > NAME_MAX:
            raise ConfigError(
                f"--out {escape_name(out)}: too long a file name for {escape_name(path.name)} "
                f"(at most {NAME_MAX} bytes): use a shorter one"
            )
    if gallery_dir is not None and not neighbours:
        raise ConfigError("--gallery needs --neighbours K (how many neighbours to list)")
    run_cfg = run_config.load_config(run_dir, overrides)
    paths = find_images(inputs)
    if gallery_dir is not None:
        gallery_files(gallery_dir)  # before the slow part: a missing or empty gallery fails now
    run_cfg.folder.require_model()  # a clear error before TensorFlow is imported
    embedder = open_model(run_cfg.folder, run_cfg.cfg)
    shape = embedder.input_shape
    images = read_images(paths, shape)
    names = [str(p) for p in paths]
    emb = embedder.embed(images)
    result = {
        "count": len(emb),
        "dim": int(emb.shape[1]),
        "image_shape": list(shape),
        "out": str(write_embeddings(out, names, emb)),
        "embeddings": emb,
        "names": names,
    }
    if not neighbours:
        return result

    from tripletlab.reuse.index import open_index

    index = open_index(run_cfg.folder)
    if index is not None and not index.serves(gallery_dir):
        log.info(
            "the run's index (%s) is of another gallery: searching exactly",
            run_cfg.folder.index_dir,
        )
        index = None
    if index is not None:
        gallery = indexed_gallery(index, run_cfg, shape)
    elif gallery_dir is not None:
        gallery = folder_gallery(gallery_dir, shape)
    else:
        gallery = train_gallery(run_cfg, shape)
    if neighbours > len(gallery.images):
        log.warning(
            "--neighbours %d is more than the %d gallery images; listing all of them",
            neighbours,
            len(gallery.images),
        )
    if index is not None:  # tripletlab-index embedded the gallery already
        idx, dist = index.search(emb, neighbours)
    else:
        idx, dist = nearest(emb, embedder.embed(gallery.images), neighbours)
    table = []
    for q, name in enumerate(names):
        for rank in range(idx.shape[1]):
            g = int(idx[q, rank])
            table.append(
                [name, rank + 1, gallery.names[g], gallery.labels[g], float(dist[q, rank])]
            )
    header = ["query", "rank", "neighbour", "label", "distance"]
    lines = ["\t".join(header)]
    lines += ["\t".join(_tsv_cell(v) for v in row[:4]) + f"\t{row[4]!r}" for row in table]
    table_path = atomic_write_text(_sidecar(out, ".tsv"), "\n".join(lines) + "\n")
    sheet_path = atomic_write_bytes(
        _sidecar(out, ".png"), contact_sheet(images, names, gallery, idx, dist)
    )
    result.update(
        gallery=gallery.source,
        gallery_size=len(gallery.images),
        header=header,
        table=table,
        neighbours_path=str(table_path),
        sheet_path=str(sheet_path),
    )
    return result
