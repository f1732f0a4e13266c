"""Embed images with a model and evaluate a split: shared by training and the reuse commands.

Training's per-epoch evaluation and ``tripletlab-evaluate`` / ``-visualize`` / ``-embed``
all embed through :func:`embed_images` with the step from :func:`make_embed_step`, so the
same images give the same embeddings, bit for bit (oneDNN's results depend on the batch
size, so the batching is part of the contract).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from tripletlab.errors import one_line
from tripletlab.run_folder import RunFolder, RunFolderError

# The retrieval metrics and k-NN score a chunk of queries against the whole gallery at once
# (float32 [chunk, gallery], and temporaries of that shape): at most this many bytes per
# matrix, so that a larger split means more chunks, not larger ones.
MAX_SCORE_BYTES = 1 << 25


def make_embed_step(model, jit_compile: bool = False) -> Callable:
    """A ``tf.function``: float32 images [B, H, W, C] in [0, 1] -> float32 embeddings [B, D]."""
    import tensorflow as tf

    def embed_step(images):
        return tf.cast(model(images, training=False), tf.float32)

    return tf.function(embed_step, jit_compile=jit_compile)


def embed_images(embed_step: Callable, images: np.ndarray, batch_size: int, dim: int) -> np.ndarray:
    """uint8 images [N, H, W, C] (an array or ImageFiles) -> float32 embeddings [N, dim].

    One batch (:func:`~tripletlab.data.pipeline.eval_batches`, at most ``batch_size``) is scaled
    to float32 and embedded at a time, written into the [N, dim] output allocated up front:
    a streamed split is never decoded whole, an in-memory one never copied or converted to
    float32 whole. Streamed images: a file that fails to decode is a DataError naming it.
    """
    from tripletlab.data.pipeline import scale_images

    out = np.empty((len(images), int(dim)), np.float32)
    done = 0
    for embeddings in embed_batches(
        lambda batch: embed_step(scale_images(batch)).numpy(), images, batch_size
    ):
        out[done : done + len(embeddings)] = embeddings
        done += len(embeddings)
    if done != len(out):  # an embed step that returned the wrong number of rows
        raise RuntimeError(f"embedded {done} of {len(out)} images")
    return out


def embed_batches(
    embed: Callable[[np.ndarray], np.ndarray], images: Any, batch_size: int
) -> Iterator[np.ndarray]:
    """Yield ``embed(batch)`` for uint8 batches [b, H, W, C] of ``images`` (an array, or
    streamed ImageFiles decoded a few batches ahead), in order. A streamed file that fails to
    decode is a DataError naming it (TensorFlow's own message names no file)."""
    from tripletlab.data.image_files import ImageFiles, tf_decode_errors
    from tripletlab.data.pipeline import eval_batches

    done = 0
    try:
        for batch in eval_batches(images, int(batch_size)):
            embeddings = embed(batch)
            done += len(embeddings)
            yield embeddings
    except tf_decode_errors():
        if not isinstance(images, ImageFiles):
            raise
        unreadable = images.find_unreadable(done)  # among those not embedded yet
        if unreadable is None:
            raise
        raise unreadable from None


def metric_chunk_size(chunk_size: int, gallery_size: int) -> int:
    """``eval.chunk_size`` queries, fewer when a [chunk, gallery_size] float32 score matrix
    would pass MAX_SCORE_BYTES (at least 1)."""
    return max(1, min(int(chunk_size), MAX_SCORE_BYTES // (4 * max(int(gallery_size), 1))))


def query_sample(num_items: int, size: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted indices [size] of a fixed random sample of ``num_items`` queries; None (every
    item) when ``size`` is None or not smaller. The same seed gives the same sample, so
    that evaluations of successive epochs are comparable."""
    if size is None or size >= num_items:
        return None
    return np.sort(np.random.default_rng(seed).choice(num_items, size=size, replace=False))


def evaluate_split(
    embed: Callable[[np.ndarray], np.ndarray],
    data,
    eval_cfg,
    queries: np.ndarray | None = None,
    knn: bool = True,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Every metric on the test split: the test set is queries and gallery (leaving the query
    out), or queries against ``data.x_gallery`` when the dataset has one; the train set is
    kNN's gallery, unless it shares no class with the test set (unseen classes: no kNN).

    ``embed``: uint8 images [N, H, W, C] -> [N, D]. ``queries``: optional [Q] indices of the
    test items used as retrieval queries (None: all); ``knn=False`` skips k-NN accuracy and
    the train split's embeddings (the cheap per-epoch evaluation). Returns (metrics, test
    embeddings [N_test, D], train embeddings [N_train, D], or [0, D] when kNN was not
    computed).
    """
    from tripletlab.metrics import evaluate_embeddings, shares_classes

    test_emb = embed(data.x_test)
    knn = knn and shares_classes(data.y_train, data.y_test)
    train_emb = embed(data.x_train) if knn else np.zeros((0, test_emb.shape[1]), np.float32)
    gallery = getattr(data, "x_gallery", None)
    # The largest gallery a chunk of queries is scored against: the test split itself (or
    # the gallery split), and the train split for k-NN.
    largest = max(len(test_emb) if gallery is None else len(gallery), len(train_emb))
    metrics = evaluate_embeddings(
        test_emb,
        data.y_test,
        train_emb if knn else None,
        data.y_train if knn else None,
        knn_k=eval_cfg.knn_k,
        chunk_size=metric_chunk_size(eval_cfg.chunk_size, largest),
        gallery_emb=None if gallery is None else embed(gallery),
        gallery_labels=None if gallery is None else data.y_gallery,
        queries=queries,
    )
    return metrics, test_emb, train_emb


def load_model(folder: RunFolder):
    """The run's saved embedding model (Keras); a clear error if it is missing or corrupt."""
    import keras

    import tripletlab.models  # noqa: F401  registers FusedBatchNorm for deserialisation

    path = folder.require_model()
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, ...
        raise RunFolderError(
            f"cannot load the saved model {path}: {one_line(exc)}; the file is corrupt or was "
            "written by another version of Keras"
        ) from None


class Embedder:
    """A model and its embedding path, exactly as training evaluated it.

    ``embed(images)`` takes uint8 [N, H, W, C]; images of another shape are converted to the
    model's input shape first by the one preprocessing path
    (:func:`tripletlab.data.preprocess.conform`: alpha dropped, grey <-> RGB, resized).
    """

    def __init__(self, model, batch_size: int, jit_compile: bool = False):
        self.model = model
        self.batch_size = int(batch_size)
        self._step = make_embed_step(model, jit_compile)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.model.input_shape[1:])  # type: ignore[return-value]

    @property
    def embedding_size(self) -> int:
        return int(self.model.output_shape[-1])

    def embed(self, images: np.ndarray) -> np.ndarray:
        from tripletlab.data.image_files import ImageFiles

        if isinstance(images, ImageFiles):  # streamed: decoded batch by batch, never all at once
            if images.image_shape != self.input_shape:
                images = images.with_format(*self.input_shape)
            return embed_images(self._step, images, self.batch_size, self.embedding_size)
        images = np.asarray(images)
        if images.shape[1:] != self.input_shape:
            from tripletlab.data import conform_images

            images = conform_images(images, self.input_shape)
        return embed_images(self._step, images, self.batch_size, self.embedding_size)


def open_model(folder: RunFolder, cfg: Any) -> Embedder:
    """Set TensorFlow up as training did (``cfg.trainer``), load the run's model."""
    from tripletlab.runtime import setup_tf

    runtime = setup_tf(cfg.trainer)
    return Embedder(load_model(folder), cfg.eval.batch_size, jit_compile=runtime.jit_compile)


SPLITS: Sequence[str] = ("test", "train")
