"""tripletlab.inference: the fixed query sample of the per-epoch evaluation; embedding and
evaluating a split in memory bounded by the settings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tripletlab import inference
from tripletlab.data import pipeline
from tripletlab.data.image_files import ImageFiles
from tripletlab.data.pipeline import eval_batch_size
from tripletlab.inference import embed_images, evaluate_split, metric_chunk_size, query_sample


def test_query_sample_is_fixed_sorted_and_distinct():
    a = query_sample(10_000, 2000)
    assert a is not None and a.shape == (2000,)
    assert np.array_equal(a, query_sample(10_000, 2000))  # the same queries every epoch
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 10_000
    assert not np.array_equal(a, query_sample(10_000, 2000, seed=1))
    # spread over the whole split, not its first rows
    assert a[-1] > 9_000 and a[0] < 1_000


def test_no_sample_means_every_query():
    assert query_sample(500, None) is None
    assert query_sample(500, 500) is None
    assert query_sample(500, 10_000) is None


# ------------------------------------------------------- memory bounded by the settings


class RecordingEmbed:
    """An embed step (float32 [B, H, W, C] -> [B, 2]: each image's mean and max) that
    records the batches it was given and, through ``decoded``, how many images had been
    decoded when each batch arrived."""

    def __init__(self, decoded=lambda: 0):
        self.decoded = decoded
        self.sizes: list[int] = []
        self.ahead: list[int] = []  # images decoded but not yet embedded, at each call
        self.embedded = 0

    def __call__(self, images):
        import tensorflow as tf

        self.sizes.append(int(images.shape[0]))
        self.ahead.append(self.decoded() - self.embedded)
        self.embedded += int(images.shape[0])
        axes = [1, 2, 3]
        return tf.stack([tf.reduce_mean(images, axes), tf.reduce_max(images, axes)], axis=1)


def _expected(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    return np.stack([x.mean(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))], axis=1)


class CountingFiles(ImageFiles):
    """ImageFiles whose decoded images are counted as they come out of the decoder."""

    decoded = 0

    def dataset(self):
        import tensorflow as tf

        def count(image):
            CountingFiles.decoded += 1
            return image

        def counted(image):
            out = tf.py_function(count, [image], tf.uint8)
            out.set_shape(image.shape)
            return out

        return super().dataset().map(counted)


def test_a_streamed_split_is_embedded_a_few_batches_at_a_time(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (600, 8, 8, 3), dtype=np.uint8)
    paths = []
    for i, array in enumerate(arrays):
        paths.append(tmp_path / f"{i:04d}.png")
        Image.fromarray(array).save(paths[-1])
    batch = 16
    # One uint8 batch of prefetch: the budget, not the split, sets how far decoding runs ahead.
    monkeypatch.setattr(pipeline, "PREFETCH_BYTES", batch * 8 * 8 * 3)
    CountingFiles.decoded = 0
    files = CountingFiles(paths, 8, 8, 3)
    step = RecordingEmbed(lambda: CountingFiles.decoded)
    out = embed_images(step, files, batch, 2)
    np.testing.assert_allclose(out, _expected(arrays), rtol=1e-6)  # every image, in order
    assert max(step.sizes) == batch and sum(step.sizes) == 600
    # Decoded ahead of the model: the prefetched batch, the one being batched and the
    # decoder's parallel calls; never the split.
    import os

    assert max(step.ahead) <= 3 * batch + (os.cpu_count() or 1)


def test_an_in_memory_split_is_embedded_in_byte_bounded_batches(monkeypatch):
    images = np.random.default_rng(1).integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    step = RecordingEmbed()
    np.testing.assert_allclose(embed_images(step, images, 1024, 2), _expected(images), rtol=1e-6)
    assert step.sizes == [50]
    # 8 images' worth of float32: batches of 8, whatever eval.batch_size asks for.
    monkeypatch.setattr(pipeline, "MAX_EVAL_BATCH_BYTES", 8 * 6 * 6 * 3 * 4)
    assert eval_batch_size((6, 6, 3), 1024) == 8
    step = RecordingEmbed()
    np.testing.assert_allclose(embed_images(step, images, 1024, 2), _expected(images), rtol=1e-6)
    assert step.sizes == [8] * 6 + [2]


def test_metric_chunks_are_bounded_by_bytes_of_scores():
    limit = inference.MAX_SCORE_BYTES
    assert metric_chunk_size(1024, 1000) == 1024  # small galleries: eval.chunk_size
    assert metric_chunk_size(1024, 64_000) == limit // (4 * 64_000)
    assert metric_chunk_size(1024, 64_000) * 64_000 * 4 <= limit
    assert metric_chunk_size(1024, 10**12) == 1


def _split(rng, n_train, n_test, classes=5, dim=4):
    """Images whose embedding (mean, max) carries their class, so the metrics are not trivial."""
    y_train, y_test = rng.integers(0, classes, n_train), rng.integers(0, classes, n_test)

    def images(y):
        base = (y * 40 + 20).astype(np.uint8)[:, None, None, None]
        noise = rng.integers(0, 30, (len(y), 3, 3, 1), dtype=np.uint8)
        return base + noise

    return SimpleNamespace(x_train=images(y_train), y_train=y_train, x_test=images(y_test),
                           y_test=y_test)  # fmt: skip


def test_evaluation_chunks_by_the_largest_gallery_and_scores_the_same(monkeypatch):
    from tripletlab import metrics

    data = _split(np.random.default_rng(2), n_train=300, n_test=40)
    eval_cfg = SimpleNamespace(knn_k=3, chunk_size=1024)
    embed = lambda x: embed_images(RecordingEmbed(), x, 64, 2)  # noqa: E731
    unbounded, _, _ = evaluate_split(embed, data, eval_cfg)
    chunks = []
    real = metrics.evaluate_embeddings

    def recording(*args, **kwargs):
        chunks.append(kwargs["chunk_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics, "evaluate_embeddings", recording)
    # Room for 7 rows of the k-NN gallery (300 train items), though the test split is 40.
    monkeypatch.setattr(inference, "MAX_SCORE_BYTES", 7 * 300 * 4)
    bounded, _, _ = evaluate_split(embed, data, eval_cfg)
    assert chunks == [7]
    assert bounded == pytest.approx(unbounded)
    assert 0 < unbounded["knn_accuracy"] <= 1
