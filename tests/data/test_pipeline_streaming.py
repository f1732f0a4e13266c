"""The streamed pipeline: the same batches as in memory, capped epochs, and real (tiny) runs
on image files in the benchmark layouts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

import tripletlab
from tests.helpers import write_cub, write_image_folder, write_inshop
from tripletlab.data import load_dataset
from tripletlab.data.pipeline import (
    MAX_EVAL_BATCH_VALUES,
    TrainPipeline,
    eval_batch_size,
    eval_dataset,
)
from tripletlab.errors import DataError
from tripletlab.options.dataset import ImageFolderConfig
from tripletlab.run_folder import RunFolder

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def folder_pair(tmp_path_factory):
    """One PNG folder loaded twice: decoded in memory and streamed (same pixels: PNG at its
    own size)."""
    root = tmp_path_factory.mktemp("imgs")
    write_image_folder(root, {"a": 9, "b": 8, "c": 7, "d": 6}, size=(10, 12), colour=True)
    memory = load_dataset(ImageFolderConfig(root=str(root), image_size=None, stream="false"))
    streamed = load_dataset(ImageFolderConfig(root=str(root), image_size=None, stream="true"))
    return memory, streamed


def _batches(pipe, epoch):
    return [(x.numpy(), y.numpy()) for x, y in pipe.epoch(epoch)]


@pytest.mark.parametrize("sampler", ["random", "pk"])
def test_streamed_batches_equal_the_in_memory_ones(folder_pair, sampler):
    memory, streamed = folder_pair
    cfg = OmegaConf.create({"name": sampler, "classes_per_batch": 3, "images_per_class": 2})
    a = TrainPipeline(memory.x_train, memory.y_train, cfg, 6, seed=4, augment="flip_translate")
    b = TrainPipeline(streamed.x_train, streamed.y_train, cfg, 6, seed=4, augment="flip_translate")
    assert b.streamed and not a.streamed and a.steps_per_epoch == b.steps_per_epoch > 1
    for epoch in (1, 2):
        got, want = _batches(b, epoch), _batches(a, epoch)
        assert len(got) == len(want) == a.steps_per_epoch
        for (xb, yb), (xa, ya) in zip(got, want, strict=True):
            assert xb.dtype == np.float32 and xb.shape == (6, 12, 10, 3)
            np.testing.assert_array_equal(xb, xa)
            np.testing.assert_array_equal(yb, ya)
    # A resumed run rebuilds the pipeline: epoch 2 is the same batches again.
    again = TrainPipeline(
        streamed.x_train, streamed.y_train, cfg, 6, seed=4, augment="flip_translate"
    )
    np.testing.assert_array_equal(_batches(again, 2)[0][0], _batches(b, 2)[0][0])


def test_max_steps_keeps_the_first_batches_of_each_epoch(folder_pair):
    _, streamed = folder_pair
    cfg = OmegaConf.create({"name": "random"})
    full = TrainPipeline(streamed.x_train, streamed.y_train, cfg, 4, seed=0)
    capped = TrainPipeline(streamed.x_train, streamed.y_train, cfg, 4, seed=0, max_steps=2)
    assert full.steps_per_epoch > 2 and capped.steps_per_epoch == 2
    np.testing.assert_array_equal(capped.batch_indices(3), full.batch_indices(3)[:2])
    assert len(_batches(capped, 3)) == 2
    more = TrainPipeline(streamed.x_train, streamed.y_train, cfg, 4, seed=0, max_steps=10**6)
    assert more.steps_per_epoch == full.steps_per_epoch


def test_eval_batches_are_the_same_and_large_images_get_smaller_batches(folder_pair):
    memory, streamed = folder_pair
    a = np.concatenate([x.numpy() for x in eval_dataset(memory.x_test, 3)])
    b = np.concatenate([x.numpy() for x in eval_dataset(streamed.x_test, 3)])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, memory.x_test / 255.0, rtol=1e-6)
    assert eval_batch_size((28, 28, 1), 1024) == 1024  # Fashion-MNIST: unchanged
    assert eval_batch_size((224, 224, 3), 1024) == MAX_EVAL_BATCH_VALUES // (224 * 224 * 3) == 111
    assert eval_batch_size((4096, 4096, 3), 8) == 1


def _run(tmp_path, overrides):
    cfg = tripletlab.compose(overrides)
    value = tripletlab.train(cfg, tmp_path / "run")
    folder = tmp_path / "run"
    with (folder / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((folder / "summary.json").read_text())
    return value, rows, summary, folder


TINY_FILES = [
    "model=small_cnn",
    "model.num_channels=4",
    "model.embedding_size=8",
    "sampler=pk",
    "sampler.classes_per_batch=2",
    "sampler.images_per_class=2",
    "trainer.warmup_epochs=0",
    "trainer.progress=log",
    "eval.max_points=50",
    "dataset.image_size=16",
    "dataset.stream=true",
]


def test_a_streamed_unseen_class_run_with_capped_epochs(tmp_path):
    root = write_cub(tmp_path / "data", classes=4, per_class=6)
    value, rows, summary, folder = _run(
        tmp_path,
        [
            "dataset=cub200",
            f"dataset.root={root}",
            *TINY_FILES,
            "trainer.epochs=2",
            "trainer.steps_per_epoch=2",
            "trainer.augment=flip_translate",
        ],
    )
    assert summary["status"] == "ok"
    assert [int(r["step"]) for r in rows] == [2, 4]  # 12 training images would give 3 steps
    assert 0.0 <= value <= 1.0 and summary["metrics"]["precision_at_1"] == value
    # Unseen classes: no k-NN (no test class has training images), retrieval metrics only.
    assert summary["metrics"]["knn_accuracy"] is None and rows[-1]["knn_accuracy"] == ""
    run = RunFolder(folder)
    assert run.model_path.is_file() and list(run.projector_dir.glob("*sprite*"))
    # The reuse commands stream the same files: tripletlab-evaluate gives the run's metrics.
    from tripletlab.reuse.evaluate import evaluate_run

    result = evaluate_run(folder)
    assert result["dataset"]["knn_gallery"] == 0 and result["dataset"]["queries"] == 12
    for key in ("precision_at_1", "map_at_r", "recall_at_2"):
        assert result["metrics"][key] == pytest.approx(summary["metrics"][key], abs=1e-6)


def test_inshop_queries_are_ranked_against_the_gallery(tmp_path):
    root = write_inshop(tmp_path / "data", train_items=3, test_items=3)
    value, rows, summary, _ = _run(
        tmp_path,
        ["dataset=inshop", f"dataset.root={root}", *TINY_FILES, "trainer.epochs=1"],
    )
    # 3 queries, each with 2 gallery images of its item among 6: recall@8 sees all of them.
    assert summary["status"] == "ok" and 0.0 <= value <= 1.0
    assert float(rows[-1]["recall_at_8"]) == 1.0
    assert summary["metrics"]["knn_accuracy"] is None


def test_without_the_check_a_bad_file_fails_its_epoch_by_name(tmp_path):
    root = write_cub(tmp_path / "data", classes=4, per_class=4)
    bad = next((root / "images").glob("001.*/*.jpg"))
    bad.write_text("not a JPEG at all")
    cfg = tripletlab.compose(
        ["dataset=cub200", f"dataset.root={root}", *TINY_FILES, "dataset.verify=false",
         "dataset.channels=3", "trainer.epochs=1"]
    )  # fmt: skip
    with pytest.raises(DataError, match=f"image file {bad} is not an image"):
        tripletlab.train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and str(bad) in summary["error"]
    # find_unreadable names it; it finds nothing wrong in a good epoch, or in memory.
    data = load_dataset(cfg.dataset)
    pk = OmegaConf.create({"name": "pk", "classes_per_batch": 2, "images_per_class": 2})
    pipe = TrainPipeline(data.x_train, data.y_train, pk, 4, seed=0)
    assert str(bad) in str(pipe.find_unreadable(1))
    bad.unlink()
    good = next((root / "images").glob("002.*/*.jpg")).read_bytes()
    bad.write_bytes(good)
    assert pipe.find_unreadable(1) is None


@pytest.mark.slow  # about 16 s: a MobileNetV3 built, compiled and saved
def test_a_pretrained_backbone_trains_on_streamed_rgb_images(tmp_path):
    root = write_cub(tmp_path / "data", classes=4, per_class=4)
    value, rows, summary, _ = _run(
        tmp_path,
        [
            "dataset=cub200",
            f"dataset.root={root}",
            "dataset.image_size=32",
            "dataset.stream=true",
            "model=mobilenetv3_small",
            "model.weights=none",
            "model.embedding_size=8",
            "sampler.classes_per_batch=2",
            "sampler.images_per_class=2",
            "trainer.epochs=1",
            "trainer.warmup_epochs=0",
            "trainer.steps_per_epoch=1",
            "trainer.progress=log",
            "eval.max_points=20",
        ],
    )
    assert summary["status"] == "ok" and int(rows[0]["step"]) == 1
    assert np.isfinite(float(rows[0]["loss"]))


def _garbled_jpeg_folder(root, bad_split: str):
    """train/ and test/ of 64x64 noise JPEGs; one file of ``bad_split`` garbled in the middle
    of its scan data (header and end marker intact: the header check passes it)."""
    for split in ("train", "test"):
        write_image_folder(
            root / split, {"a": 4, "b": 4, "c": 4}, size=(64, 64), colour=True, ext=".jpg"
        )
    bad = root / bad_split / "b" / "1.jpg"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2] + b"\xff" * 200 + raw[len(raw) // 2 + 200 :])
    return bad


UNCHECKED = ["dataset=image_folder", "dataset.verify=false", "dataset.channels=3"]


def test_a_file_that_fails_to_decode_in_evaluation_is_named(tmp_path):
    bad = _garbled_jpeg_folder(tmp_path / "data", "test")
    cfg = tripletlab.compose(
        [*UNCHECKED, f"dataset.root={tmp_path / 'data'}", *TINY_FILES, "trainer.epochs=1"]
    )
    # Training reads only train/: the test split's file fails when evaluation embeds it.
    with pytest.raises(DataError, match=f"image file {bad} cannot be decoded"):
        tripletlab.train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and str(bad) in summary["error"]
    # With the check, it fails before training, named.
    checked = tripletlab.compose(
        ["dataset=image_folder", f"dataset.root={tmp_path / 'data'}", *TINY_FILES]
    )
    with pytest.raises(DataError, match=f"{bad} cannot be decoded"):
        load_dataset(checked.dataset)


def test_a_file_that_fails_to_decode_in_the_knn_gallery_is_named(tmp_path):
    import keras

    from tripletlab.inference import Embedder, evaluate_split

    bad = _garbled_jpeg_folder(tmp_path / "data", "train")
    cfg = tripletlab.compose([*UNCHECKED, f"dataset.root={tmp_path / 'data'}", *TINY_FILES])
    data = load_dataset(cfg.dataset)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten()])
    embedder = Embedder(model, batch_size=4)
    assert embedder.embed(data.x_test).shape == (12, 16 * 16 * 3)
    # The train split is kNN's gallery (tripletlab-evaluate, tripletlab-embed's default).
    with pytest.raises(DataError, match=f"image file {bad} cannot be decoded"):
        evaluate_split(embedder.embed, data, cfg.eval)
