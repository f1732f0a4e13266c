"""Export embeddings for TensorBoard's Embedding Projector (and projector.tensorflow.org).

:func:`write_projector` fills one folder with:

- ``embedding.ckpt.index`` / ``embedding.ckpt.data-*`` and ``checkpoint``: a TF checkpoint
  holding the embeddings as one tensor, stored under a name a person reads (``digits test``:
  the dataset and split), which is the name the projector lists. The projector plugin finds
  it with ``tf.train.latest_checkpoint``, which needs the ``checkpoint`` state file.
- ``projector_config.pbtxt``: a ``ProjectorConfig`` pointing the checkpoint tensor at
  ``metadata.tsv`` and ``sprite.png``. Paths in it are relative to the folder, so the folder
  can be moved; no ``model_checkpoint_path`` is written for the same reason (TensorBoard
  would resolve a relative one against its working directory).
- ``metadata.tsv``: header ``label<TAB>class_name``, then one row per point, in order.
- ``sprite.png``: thumbnails on a ``ceil(sqrt(N))`` square grid, row-major, in order.
- ``vectors.tsv``: the embeddings as tab-separated text; with ``metadata.tsv`` this is the
  pair to upload to https://projector.tensorflow.org.

TensorBoard shows it when its ``--logdir`` is this folder, or when the folder is a run (a
folder holding event files) under ``--logdir``: a plain subfolder without event files is not
a run, and the plugin does not look into it. A run folder's projector is its ``tensorboard/``
folder, so that the scalars, the HParams session and the projector are one TensorBoard run.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector

from tripletlab.errors import ConfigError, DataError
from tripletlab.io_utils import atomic_write_bytes, atomic_write_text

__all__ = ["MAX_SPRITE_SIDE", "checkpoint_tensor_name", "write_projector"]

# The projector front end refuses sprites larger than 8192 x 8192 pixels (a WebGL texture
# limit).
MAX_SPRITE_SIDE = 8192

CHECKPOINT_PREFIX = "embedding.ckpt"
MAX_NAME_CHARS = 100
# Printable text: a control character would break the projector's menu and its URLs.
_TENSOR_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]+")


def checkpoint_tensor_name(tensor_name: str = "embedding") -> str:
    """The name the projector lists for ``tensor_name``: its key in the checkpoint, which
    is the name itself (no ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix)."""
    return tensor_name


def write_projector(
    out_dir: str | os.PathLike,
    embeddings: Any,
    labels: Any,
    class_names: Sequence[str],
    images: Any | None,
    tensor_name: str = "embedding",
) -> None:
    """Write embeddings, metadata and a sprite for the Embedding Projector into ``out_dir``.

    Args:
        out_dir: folder to fill (created if missing). Use a dedicated folder: its
            ``checkpoint`` file is overwritten.
        embeddings: [N, D] float, finite.
        labels: [N] integers in ``[0, len(class_names))``.
        class_names: name of each class id; tabs and newlines become spaces in metadata.tsv.
        images: [N, H, W, C] (C = 1, 3 or 4) or [N, H, W], float in [0, 1] or uint8, in the
            same order as the embeddings; ``None`` writes no sprite.
        tensor_name: the embedding's name in the projector's menu (and its key in the
            checkpoint), e.g. ``"digits test"``: printable text of at most
            :data:`MAX_NAME_CHARS` characters.

    Thumbnails are shrunk when the sprite would exceed ``MAX_SPRITE_SIDE`` pixels per side;
    a :class:`DataError` is raised when even 1-pixel thumbnails would not fit.
    """
    if (
        not isinstance(tensor_name, str)
        or not _TENSOR_NAME_RE.fullmatch(tensor_name)
        or tensor_name != tensor_name.strip()
        or len(tensor_name) > MAX_NAME_CHARS
    ):
        raise ConfigError(
            f"tensor_name must be printable text of 1 to {MAX_NAME_CHARS} characters without "
            f"leading or trailing spaces, got {tensor_name!r}"
        )
    emb = _check_embeddings(embeddings)
    n = emb.shape[0]
    lab = _check_labels(labels, n, len(class_names))
    sprite = None if images is None else _make_sprite(_check_images(images, n))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # The checkpoint is written under a temporary prefix and merged into place (what TF's
    # savers do); the small "checkpoint" state file that makes it visible comes last.
    _save_tensor(out / CHECKPOINT_PREFIX, tensor_name, emb)
    atomic_write_text(out / "vectors.tsv", _tsv_vectors(emb))
    atomic_write_text(out / "metadata.tsv", _metadata_tsv(lab, class_names))

    config = projector.ProjectorConfig()
    info = config.embeddings.add()
    info.tensor_name = checkpoint_tensor_name(tensor_name)
    info.metadata_path = "metadata.tsv"
    if sprite is not None:
        png, (tile_w, tile_h) = sprite
        atomic_write_bytes(out / "sprite.png", png)
        info.sprite.image_path = "sprite.png"
        info.sprite.single_image_dim.extend([tile_w, tile_h])
    atomic_write_text(out / "projector_config.pbtxt", text_format.MessageToString(config))
    # CheckpointState text proto; the path is relative so the folder stays movable.
    atomic_write_text(
        out / "checkpoint",
        f'model_checkpoint_path: "{CHECKPOINT_PREFIX}"\n'
        f'all_model_checkpoint_paths: "{CHECKPOINT_PREFIX}"\n',
    )


def _save_tensor(prefix: Path, name: str, value: np.ndarray) -> None:
    """A V2 checkpoint at ``prefix`` holding ``value`` under the key ``name``.

    ``tf.train.Checkpoint`` would store it as ``<attribute>/.ATTRIBUTES/VARIABLE_VALUE``,
    the name the projector would then list; the raw ops store the key as given.
    """
    # Paths as their bytes on disk: a folder name that is not UTF-8 is no text for TensorFlow.
    temp = os.fsencode(f"{prefix}_temp/part-00000")
    tf.raw_ops.SaveV2(
        prefix=temp, tensor_names=[name], shape_and_slices=[""], tensors=[tf.constant(value)]
    )
    tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=[temp], destination_prefix=os.fsencode(prefix), delete_old_dirs=True
    )


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy array of ``x``; bfloat16 (numpy has no such type) becomes float32."""
    arr = np.asarray(x)
    return arr.astype(np.float32) if arr.dtype.name == "bfloat16" else arr


def _check_embeddings(embeddings: Any) -> np.ndarray:
    emb = _as_numpy(embeddings)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise DataError(f"embeddings must have shape [N, D] with N, D > 0, got {emb.shape}")
    if emb.dtype.kind not in "fiu":
        raise DataError(f"embeddings must be numbers, got dtype {emb.dtype}")
    # The projector serves float32 whatever is stored; storing float32 keeps them equal.
    emb = emb.astype(np.float32)
    if not np.isfinite(emb).all():
        raise DataError("embeddings contain NaN or inf (or values too large for float32)")
    return emb


def _check_labels(labels: Any, n: int, num_classes: int) -> np.ndarray:
    lab = _as_numpy(labels)
    if lab.shape != (n,):
        raise DataError(f"labels must have shape [{n}] to match the embeddings, got {lab.shape}")
    if lab.dtype.kind not in "iu":
        raise DataError(f"labels must be integers, got dtype {lab.dtype}")
    bad = (lab < 0) | (lab >= num_classes)
    if bad.any():
        raise DataError(
            f"label {lab[bad][0]} has no class name: there are {num_classes} class names"
        )
    return lab.astype(np.int64)


def _check_images(images: Any, n: int) -> np.ndarray:
    """Validate images and return them as uint8 [N, H, W, C] with C in {1, 3, 4}."""
    img = _as_numpy(images)
    if img.ndim == 3:
        img = img[..., None]
    if img.ndim != 4 or img.shape[-1] not in (1, 3, 4):
        raise DataError(
            f"images must have shape [N, H, W] or [N, H, W, C] with C in 1, 3, 4; got {img.shape}"
        )
    if img.shape[0] != n:
        raise DataError(f"there are {img.shape[0]} images for {n} embeddings")
    if img.shape[1] == 0 or img.shape[2] == 0:
        raise DataError(f"images have no pixels: shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if img.dtype.kind != "f":
        raise DataError(f"images must be uint8 or float in [0, 1], got dtype {img.dtype}")
    img = img.astype(np.float32)
    lo, hi = float(np.min(img)), float(np.max(img))
    # A small tolerance for resampling overshoot; anything more is a different scale
    # ([0, 255] or [-1, 1]) that clipping would silently turn into a wrong picture.
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
        raise DataError(
            f"float images must be in [0, 1], got values in [{lo:g}, {hi:g}]; "
            "rescale them or pass uint8"
        )
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _make_sprite(img: np.ndarray) -> tuple[bytes, tuple[int, int]]:
    """Tile uint8 images [N, H, W, C] into a square sprite; returns PNG bytes and (w, h)."""
    n, h, w, c = img.shape
    grid = math.ceil(math.sqrt(n))
    if grid > MAX_SPRITE_SIDE:
        raise DataError(
            f"{n} images do not fit in a {MAX_SPRITE_SIDE} x {MAX_SPRITE_SIDE} sprite even "
            f"at 1 pixel each (at most {MAX_SPRITE_SIDE**2}); export fewer points"
        )
    if grid * max(h, w) > MAX_SPRITE_SIDE:
        # Shrink to fit, keeping the aspect ratio (each side at least 1 pixel).
        scale = (MAX_SPRITE_SIDE // grid) / max(h, w)
        new_h, new_w = max(1, int(h * scale)), max(1, int(w * scale))
        # The one resize of tripletlab.data.preprocess: antialiased, so no aliasing.
        from tripletlab.data.preprocess import resize

        img = resize(img, new_h, new_w).numpy()
        h, w = new_h, new_w
    # Tiles row-major, each copied straight into its place (a padded [grid*grid, h, w, c]
    # array and its transpose would hold two more copies of the images); the tail of the
    # last row stays black.
    sheet = np.zeros((grid * h, grid * w, c), np.uint8)
    for i in range(n):
        row, col = divmod(i, grid)
        sheet[row * h : (row + 1) * h, col * w : (col + 1) * w] = img[i]
    buf = io.BytesIO()
    # PIL picks the mode from the shape: [h, w] -> L, [h, w, 3] -> RGB, [h, w, 4] -> RGBA.
    Image.fromarray(sheet[..., 0] if c == 1 else sheet).save(buf, format="PNG")
    return buf.getvalue(), (w, h)


def _tsv_vectors(emb: np.ndarray) -> str:
    # %.9g round-trips float32 exactly.
    buf = io.StringIO()
    np.savetxt(buf, emb, fmt="%.9g", delimiter="\t")
    return buf.getvalue()


def _clean_name(name: str) -> str:
    # A tab would add a column and a newline a row, misaligning every later point.
    return re.sub(r"[\t\r\n\v\f]", " ", str(name))


def _metadata_tsv(lab: np.ndarray, class_names: Sequence[str]) -> str:
    names = [_clean_name(name) for name in class_names]
    lines = ["label\tclass_name", *(f"{y}\t{names[y]}" for y in lab.tolist())]
    return "\n".join(lines) + "\n"
