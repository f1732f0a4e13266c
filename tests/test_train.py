"""End-to-end: a tiny digits run leaves every artefact; resume, NaN and mixed precision."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, TINY, compose
from tripletlab.errors import TrainingError
from tripletlab.train import METRIC_COLUMNS, Run, train


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
        assert (d / "projector" / name).stat().st_size > 0, name
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
    assert "loss" in tags and "precision_at_1" in tags


def test_finished_run_is_not_trained_again(finished_run):
    cfg = compose([*TINY, "trainer.epochs=2"])
    before = (finished_run / "metrics.csv").read_text()
    value = train(cfg, finished_run)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert value == pytest.approx(summary["metrics"]["precision_at_1"])
    assert (finished_run / "metrics.csv").read_text() == before


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    cfg = compose([*TINY, "trainer.epochs=2"])
    real_epoch = Run._train_epoch

    def stop_in_epoch_two(self, epoch, steps):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch, steps)

    monkeypatch.setattr(Run, "_train_epoch", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    first = _rows(tmp_path)
    assert [r["epoch"] for r in first] == ["1"]

    monkeypatch.setattr(Run, "_train_epoch", real_epoch)
    value = train(cfg, tmp_path)
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0] == first[0]  # epoch 1 was not trained again
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "ok"
    assert math.isfinite(value)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    # A raw (unnormalised) embedding with an absurd learning rate overflows within an epoch.
    overrides = [*TINY, "trainer.epochs=3", "model.l2_normalize=false", "sampler=random"]
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


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx512f", "amx_bf16", "amx_tile"}, "bfloat16"), ({"avx512f", "avx512_bf16"}, "off")],
)
def test_auto_precision_follows_the_cpu(monkeypatch, flags, expected):
    import keras
    import tensorflow as tf

    from tripletlab import train as train_module

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("auto follows the GPU's compute capability there, not the CPU's flags")
    monkeypatch.setattr(train_module, "cpu_flags", lambda: flags)
    cfg = compose(["trainer.mixed_precision=auto"])
    try:
        _, precision, device = train_module.setup_tf(cfg.trainer)
        policy = keras.mixed_precision.global_policy().name
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert device == "CPU"
    assert precision == expected
    assert policy == {"bfloat16": "mixed_bfloat16", "off": "float32"}[expected]


def test_auto_precision_run_records_it_and_restores_the_policy(tmp_path):
    import keras

    from tripletlab.train import has_fast_bfloat16

    train(compose([*TINY, "dataset.max_train=200"]), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["precision"] == ("bfloat16" if has_fast_bfloat16([]) else "off")
    assert keras.mixed_precision.global_policy().name == "float32"
