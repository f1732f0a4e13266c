"""End-to-end: a tiny digits run leaves every artefact; resume, NaN and mixed precision."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, TINY, compose, tiny
from tripletlab import train
from tripletlab.errors import TrainingError
from tripletlab.run_folder import METRIC_COLUMNS


def _rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One real run through run.py, as a user starts it (2 epochs on digits)."""
    run_dir = tmp_path_factory.mktemp("run")
    proc = subprocess.run(
        [sys.executable, "run.py", *TINY, "trainer.epochs=2", f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_run_folder_has_every_artefact(finished_run):
    d = finished_run
    for name in [".hydra/config.yaml", ".hydra/overrides.yaml", "run.log", "summary.json"]:
        assert (d / name).is_file(), name
    rows = _rows(d)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert list(rows[0]) == METRIC_COLUMNS
    for key in ["loss", "precision_at_1", "map_at_r", "knn_accuracy", "images_per_second"]:
        assert math.isfinite(float(rows[-1][key])), key
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["error"] is None
    assert summary["metrics"]["epoch"] == 2
    assert summary["best"]["metric"] == "precision_at_1"
    assert summary["config"]["dataset"]["name"] == "digits"
    assert summary["wall_seconds"] > 0 and summary["images_per_second"] > 0
    assert list((d / "checkpoints").glob("ckpt-2*"))
    assert list((d / "tensorboard").glob("events.out.tfevents.*"))
    for name in ["loss.png", "metrics.png", "embeddings_pca.png"]:
        assert (d / "plots" / name).stat().st_size > 0, name
    for name in ["projector_config.pbtxt", "metadata.tsv", "sprite.png", "vectors.tsv"]:
        assert (d / "tensorboard" / name).stat().st_size > 0, name  # one TensorBoard run
    assert "epoch 2/2" in (d / "run.log").read_text()


def test_saved_model_reloads_and_embeds(finished_run):
    import keras

    import tripletlab.models  # noqa: F401  as README says: registers the custom layer

    model = keras.models.load_model(finished_run / "model" / "embedding_model.keras")
    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    emb = model(x).numpy()
    assert emb.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_tensorboard_scalars_are_readable(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(finished_run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["tensors"] + acc.Tags()["scalars"]
    assert "train/loss" in tags and "eval/precision_at_1" in tags


def test_finished_run_is_not_trained_again(finished_run):
    cfg = compose([*TINY, "trainer.epochs=2"])
    before = (finished_run / "metrics.csv").read_text()
    value = train(cfg, finished_run)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert value == pytest.approx(summary["metrics"]["precision_at_1"])
    assert (finished_run / "metrics.csv").read_text() == before


class StopAfterEpoch:
    """An epoch-end callback that interrupts training as Ctrl-C would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    cfg = compose([*TINY, "trainer.epochs=2"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, callbacks=[StopAfterEpoch(1)])
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    first = _rows(tmp_path)
    assert [r["epoch"] for r in first] == ["1"]

    value = train(cfg, tmp_path)
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0] == first[0]  # epoch 1 was not trained again
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_done"] == 2
    assert math.isfinite(value)


def test_a_checkpoint_of_another_model_is_an_error_not_a_partial_restore(tmp_path):
    train(compose([*TINY, "model.embedding_size=8"]), tmp_path)
    cfg = compose([*TINY, "model.embedding_size=6", "trainer.epochs=2"])
    with pytest.raises(TrainingError, match="does not fit this run's model"):
        train(cfg, tmp_path)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    # A raw (unnormalised) embedding with an absurd learning rate overflows within an epoch.
    overrides = [*tiny(sampler="random"), "trainer.epochs=3", "model.l2_normalize=false"]
    train(compose([*overrides, "trainer.epochs=1"]), tmp_path)
    cfg = compose([*overrides, "trainer.learning_rate=1e30"])
    with pytest.raises(TrainingError, match="training diverged"):
        train(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "training diverged" in summary["error"]
    assert (tmp_path / "checkpoints" / "checkpoint").exists()
    assert list((tmp_path / "checkpoints").glob("ckpt-1.*"))


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_run(tmp_path, precision):
    import keras

    cfg = compose([*TINY, f"trainer.mixed_precision={precision}", "dataset.max_train=200"])
    try:
        value = train(cfg, tmp_path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert math.isfinite(value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok"


@pytest.mark.slow
def test_one_fashion_mnist_epoch_learns(tmp_path):
    """The default recipe, one epoch on the real Fashion-MNIST: well above the untrained 0.77."""
    from tripletlab.data import find_idx_folder

    if find_idx_folder("fashion_mnist") is None:
        pytest.skip("Fashion-MNIST is not on this machine (make data)")
    value = train(compose(["trainer.epochs=1", "trainer.progress=log"]), tmp_path)
    assert value > 0.84


def test_auto_precision_run_records_it_and_restores_the_policy(tmp_path):
    import keras
    import tensorflow as tf

    train(compose([*TINY, "dataset.max_train=200"]), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("auto follows the GPU's compute capability there")
    # The rule, read independently of tripletlab: bfloat16 exactly where the CPU has AMX.
    with open("/proc/cpuinfo") as f:
        amx = "amx_bf16" in f.read()
    assert summary["precision"] == ("bfloat16" if amx else "off")
    assert keras.mixed_precision.global_policy().name == "float32"
