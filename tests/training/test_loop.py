"""Training (tripletlab.training) end to end, checked through the run folder's files.

A tiny digits run leaves every artefact; interruption, resume, divergence, collapse,
eval.every and checkpoint_every, mixed precision. Runs are started through the Python API
or run.py; results are read back from metrics.csv, summary.json and checkpoints/ with csv,
json and ``tf.train.load_checkpoint`` (DESIGN.md, "One run's folder"). A "killed" run is
made by hand from a finished one: its later checkpoints and metrics rows are deleted, as a
kill would have left them, and the rerun must give back what the uninterrupted run wrote.
Module-scoped fixtures serve several tests; tests that rerun a folder work on a copy, so no
test depends on another.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tripletlab
from tests.helpers import (
    ROOT,
    TINY,
    checkpoint_numbers,
    compose,
    latest_checkpoint,
    read_rows,
    read_summary,
    simulate_kill,
    tiny,
)
from tripletlab import train
from tripletlab.config import METRICS
from tripletlab.errors import TrainingError
from tripletlab.run_folder import METRIC_COLUMNS

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e


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
    # Forced past the config check: the checkpoint restore checks every variable too.
    cfg = compose([*TINY, "model.embedding_size=6", "trainer.epochs=2", "trainer.resume=force"])
    with pytest.raises(TrainingError, match="does not fit this run's model"):
        train(cfg, tmp_path)


def test_a_rerun_with_another_config_is_refused_and_the_run_left_as_it_was(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    changed = ["mining=batch_all", "trainer.learning_rate=0.01", "seed=7"]
    proc = subprocess.run(
        [sys.executable, "run.py", *TINY, "trainer.epochs=2", *changed, f"hydra.run.dir={run}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run folder"), proc.stderr
    for key in ("mining.strategy: 'semi_hard' -> 'batch_all'", "seed: 42 -> 7"):
        assert key in lines[0]
    # Every file as it was: .hydra/config.yaml, run.log, checkpoints, summary.
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_rerun_that_only_extends_the_epochs_resumes(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    first = _rows(run)
    train(compose([*TINY, "trainer.epochs=3", "eval.every=2"]), run)
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[:2] == first


def test_a_failed_evaluation_loses_no_training(tmp_path):
    from tests.helpers import write_image_folder
    from tripletlab.errors import TripletLabError

    data = tmp_path / "data"
    for split in ("train", "test"):
        write_image_folder(data / split, {c: 4 for c in "abcd"}, size=(16, 16))
    bad = data / "test" / "b" / "1.png"
    good = bad.read_bytes()
    bad.write_bytes(good[:40] + b"\0" * 200)  # a header that promises more than it holds
    cfg_overrides = [
        "dataset=image_folder",
        f"dataset.root={data}",
        "dataset.stream=true",
        "dataset.verify=false",
        "dataset.image_size=16",
        "dataset.channels=1",
        *[o for o in TINY if not o.startswith("dataset=")],
    ]
    cfg = compose(cfg_overrides)
    with pytest.raises(TripletLabError, match=str(bad)):
        train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert checkpoint_numbers(run) == [1]  # saved before the evaluation failed
    trained = _rows(run)
    assert [r["epoch"] for r in trained] == ["1"] and trained[0]["precision_at_1"] == ""

    bad.write_bytes(good)  # repaired: the data differs from the run's record now
    from tripletlab.run_folder import RunConfigMismatch

    with pytest.raises(RunConfigMismatch, match=r"other data.*groups\.test/b\."):
        train(cfg, run)
    forced = compose([*cfg_overrides, "trainer.resume=force"])
    train(forced, run)  # resumes after epoch 1: only the lost evaluation is run
    rows = _rows(run)
    assert len(rows) == 1 and float(rows[0]["precision_at_1"]) > 0
    assert rows[0]["loss"] == trained[0]["loss"]
    assert rows[0]["epoch_seconds"] == trained[0]["epoch_seconds"]  # not trained again
    assert read_summary(run)["status"] == "ok"


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
    assert summary["status"] == "ok" and summary["precision"] == precision

    # What the run really computed in: the saved model's layers keep the policy they were
    # built and trained with. The backbone's features come out in `precision`, its weights
    # stay float32 (mixed, not pure, low precision), the embedding is float32.
    import tripletlab.models  # noqa: F401  registers the custom layers

    model = keras.models.load_model(tmp_path / "model" / "embedding_model.keras")
    features = keras.Model(model.inputs, model.get_layer("embedding").input)
    x = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    assert keras.backend.standardize_dtype(features(x).dtype) == precision
    assert keras.backend.standardize_dtype(model(x).dtype) == "float32"
    assert {w.dtype for w in model.weights} == {"float32"}
    # float16 needs loss scaling (its small gradients underflow); bfloat16 does not.
    import tensorflow as tf

    saved = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
    scaled = any("dynamic_scale" in name for name in saved.get_variable_to_shape_map())
    assert scaled is (precision == "float16")


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


# ------------------------------------------------ resume, divergence, collapse, cadence
RETRIEVAL = list(METRICS)
# Columns that must come back equal after a resume (timing columns cannot).
TRAINED = ["step", "loss", "fraction_positive", "embedding_norm", "embedding_spread"]
REPRODUCIBLE = [*TRAINED, "learning_rate", *RETRIEVAL]

# The reference run: 5 epochs, a checkpoint and an evaluation every 2 epochs (and after the
# last): epoch 2's on a sample of 100 test queries, epoch 4's and 5's full (full_every=4 and
# the last). Warm-up and cosine, so that the schedule's position matters on resume. Raw (not
# L2-normalised) embeddings, so that an absurd learning rate can make them overflow.
SAMPLE = 100
REFERENCE = [
    *TINY,
    "model.l2_normalize=false",
    "trainer.epochs=5",
    "trainer.checkpoint_every=2",
    "eval.every=2",
    f"eval.sample_queries={SAMPLE}",
    "eval.full_every=4",
    "trainer.warmup_epochs=1",
    "trainer.schedule=cosine",
    "trainer.deterministic=true",
    "trainer.mixed_precision=off",
]
# With trainer.weight_decay=1.0 every embedding goes to one point: weight decay pulls the
# raw (not normalised) embedding's weights to 0, so all embeddings equal the bias and
# batch-hard's loss is the margin (0.2). With 0 it trains.
COLLAPSING = [
    *TINY,
    "mining=batch_hard",
    "model.l2_normalize=false",
    "trainer.learning_rate=0.01",
    "trainer.mixed_precision=off",
    "trainer.epochs=6",
]
PATIENCE = 3


# ------------------------------------------------------------------------------ helpers
def assert_rows_equal(got: dict, want: dict, columns=REPRODUCIBLE) -> None:
    for key in columns:
        if want[key] == "":
            assert got[key] == "", (want["epoch"], key)
            continue
        assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-6, abs=1e-7), (
            want["epoch"],
            key,
        )


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Every saved variable (model weights, Adam's moments and step count, the epoch) equal."""
    import tensorflow as tf

    ra, rb = tf.train.load_checkpoint(str(a)), tf.train.load_checkpoint(str(b))
    names = sorted(ra.get_variable_to_shape_map())
    assert names == sorted(rb.get_variable_to_shape_map())
    assert any("optimizer" in n for n in names) and any("model" in n for n in names)
    for name in names:
        if name == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        va, vb = np.asarray(ra.get_tensor(name)), np.asarray(rb.get_tensor(name))
        if va.dtype.kind in "OSU":
            # the metrics rows saved with the epoch (text): their timings differ between two
            # runs; the rows themselves are compared through metrics.csv by the callers
            assert va.shape == vb.shape, name
            continue
        np.testing.assert_allclose(va, vb, rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------- the reference
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    tripletlab.train(tripletlab.compose(REFERENCE), run_dir)
    return run_dir


def test_eval_every_evaluates_on_its_multiples_and_the_last_epoch(reference):
    rows = read_rows(reference)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    from tripletlab.data import load_dataset

    test_size = len(load_dataset(tripletlab.compose(REFERENCE).dataset).x_test)
    assert test_size > SAMPLE
    for r in rows:
        epoch = int(r["epoch"])
        evaluated, full = epoch in (2, 4, 5), epoch in (4, 5)
        for key in RETRIEVAL:
            # k-NN (the train split's embeddings) only in full evaluations
            assert (r[key] != "") is (full if key == "knn_accuracy" else evaluated), (epoch, key)
        want_queries = str(test_size) if full else str(SAMPLE) if evaluated else ""
        assert r["eval_queries"] == want_queries, epoch
        assert math.isfinite(float(r["loss"]))  # the training columns are always there
    summary = read_summary(reference)
    assert summary["status"] == "ok" and summary["epochs_done"] == 5
    for key in RETRIEVAL:  # the final metrics are the last epoch's
        assert summary["metrics"][key] == pytest.approx(float(rows[-1][key]), rel=1e-9)
    p1 = {int(r["epoch"]): float(r["precision_at_1"]) for r in rows if r["precision_at_1"]}
    best_epoch = max(p1, key=p1.get)
    assert summary["best"]["epoch"] == best_epoch
    assert summary["best"]["value"] == pytest.approx(p1[best_epoch], rel=1e-9)


def test_checkpoint_every_saves_its_multiples_and_the_last_epoch(reference):
    assert checkpoint_numbers(reference) == [2, 4, 5]
    assert latest_checkpoint(reference).endswith("ckpt-5")


def test_resume_after_the_last_checkpoint_equals_the_uninterrupted_run(reference, tmp_path):
    """Killed in epoch 5: checkpoint 4 and rows 1-4 remain. The rerun trains epoch 5 only and
    gets the uninterrupted run's row and weights (a checkpoint restored only in part, e.g.
    without Adam's moments, would give others)."""
    killed = tmp_path / "killed"
    simulate_kill(reference, killed, rows_kept=4, checkpoints_kept=[2, 4])
    kept = read_rows(killed)

    value = tripletlab.train(tripletlab.compose(REFERENCE), killed)

    want, got = read_rows(reference), read_rows(killed)
    assert [int(r["epoch"]) for r in got] == [1, 2, 3, 4, 5]
    assert got[:4] == kept  # epochs 1-4 were not trained again: their rows are untouched
    assert_rows_equal(got[4], want[4])
    assert checkpoint_numbers(killed) == [2, 4, 5]
    assert_same_checkpoint(killed / "checkpoints" / "ckpt-5", reference / "checkpoints" / "ckpt-5")
    summary = read_summary(killed)
    assert summary["status"] == "ok" and summary["epochs_done"] == 5
    assert value == pytest.approx(float(want[4]["precision_at_1"]), rel=1e-6)
    assert (killed / "model" / "embedding_model.keras").is_file()


def test_resume_between_checkpoints_retrains_the_unsaved_epochs(reference, tmp_path):
    """checkpoint_every=2, killed in epoch 4: rows 1-3 were written but only epoch 2 was
    saved. The rerun resumes from checkpoint 2, trains epoch 3 again (its row replaced, not
    duplicated), then 4 and 5, all equal to the uninterrupted run."""
    killed = tmp_path / "killed"
    simulate_kill(reference, killed, rows_kept=3, checkpoints_kept=[2])

    tripletlab.train(tripletlab.compose(REFERENCE), killed)

    want, got = read_rows(reference), read_rows(killed)
    assert [int(r["epoch"]) for r in got] == [1, 2, 3, 4, 5]
    for g, w in zip(got, want, strict=True):
        assert_rows_equal(g, w)
    assert checkpoint_numbers(killed) == [2, 4, 5]
    assert_same_checkpoint(killed / "checkpoints" / "ckpt-5", reference / "checkpoints" / "ckpt-5")
    assert read_summary(killed)["status"] == "ok"


def test_the_diverged_epoch_is_never_saved(reference, tmp_path):
    """The finished reference continued for 2 more epochs with an absurd learning rate: epoch
    6 diverges, the run fails naming its last good checkpoint (epoch 5), and nothing of
    epoch 6 is saved: no checkpoint, no metrics row."""
    run_dir = tmp_path / "diverging"
    shutil.copytree(reference, run_dir)
    before = read_rows(run_dir)
    changed = ["trainer.epochs=7", "trainer.learning_rate=1e30", "trainer.resume=force"]
    cfg = tripletlab.compose([*REFERENCE, *changed])
    with pytest.raises(TrainingError) as err:
        tripletlab.train(cfg, run_dir)
    message = str(err.value)
    assert "epoch 6" in message and "ckpt-5" in message
    summary = read_summary(run_dir)
    assert summary["status"] == "failed"
    assert "ckpt-5" in summary["error"] and "learning_rate" in summary["error"]
    assert checkpoint_numbers(run_dir) == [2, 4, 5]
    assert latest_checkpoint(run_dir).endswith("ckpt-5")
    assert read_rows(run_dir) == before


# A NaN in the very last step of an epoch whose length is no multiple of the guard's
# CHECK_EVERY: a guard that only looks every CHECK_EVERY steps misses it, the NaN epoch is
# checkpointed, and the run fails an epoch later, naming the wrong one.
NAN_STEPS_PER_EPOCH = 25
NAN_EPOCH = 2
NAN_CALL = (NAN_EPOCH - 1) * NAN_STEPS_PER_EPOCH + NAN_STEPS_PER_EPOCH  # 1-based


def _nan_from_call(first_nan_call: int):
    """A backbone (images [B, H, W, C] -> features [B, 8]) whose features turn NaN from its
    ``first_nan_call``-th training call on: a counter it keeps as a non-trainable weight."""
    import keras
    import tensorflow as tf

    class NanFromCall(keras.layers.Layer):
        def build(self, input_shape):
            self.calls = self.add_weight(
                shape=(), initializer="zeros", trainable=False, name="training_calls"
            )

        def call(self, x, training=False):
            if training:
                self.calls.assign_add(1.0)
            poisoned = self.calls >= float(first_nan_call)
            return x * tf.where(poisoned, float("nan"), 1.0)

    def backbone(x, cfg, reg):
        x = keras.layers.Dense(8, kernel_regularizer=reg)(keras.layers.Flatten()(x))
        return NanFromCall()(x)

    return backbone


def test_a_nan_in_the_last_step_of_an_epoch_stops_the_run_in_that_epoch(tmp_path):
    """Epochs of 25 steps, the NaN in step 25 of epoch 2 only (evaluated every 3 epochs, so
    no evaluation trips over it first): the run stops in epoch 2, keeps checkpoint 1 and
    saves nothing of epoch 2."""
    from tripletlab.registry import BACKBONES
    from tripletlab.training.monitors import CHECK_EVERY

    assert NAN_STEPS_PER_EPOCH % CHECK_EVERY != 0
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "nan_late.yaml").write_text(
        "name: nan_late\nembedding_size: 8\n"
    )
    overrides = [
        *tiny("nan_late"),
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "model.l2_normalize=false",
        "trainer.mixed_precision=off",
        "trainer.epochs=3",
        f"trainer.steps_per_epoch={NAN_STEPS_PER_EPOCH}",
        "eval.every=3",
    ]
    run_dir = tmp_path / "run"
    BACKBONES.register("nan_late")(_nan_from_call(NAN_CALL))
    try:
        with pytest.raises(TrainingError) as err:
            tripletlab.train(tripletlab.compose(overrides), run_dir)
    finally:
        BACKBONES.unregister("nan_late")
    message = str(err.value)
    step = NAN_EPOCH * NAN_STEPS_PER_EPOCH
    assert f"diverged in epoch {NAN_EPOCH}, by step {step}" in message
    assert "ckpt-1" in message
    assert checkpoint_numbers(run_dir) == [1]
    assert [int(r["epoch"]) for r in read_rows(run_dir)] == [1]
    assert math.isfinite(float(read_rows(run_dir)[0]["loss"]))
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and summary["epochs_done"] == 1
    assert f"epoch {NAN_EPOCH}" in summary["error"]


# ------------------------------------------------------------------------- collapse
def looks_collapsed(row: dict, margin: float = 0.2) -> bool:
    """README: the loss sits at the margin while embedding_spread is below 1% of the mean
    embedding norm."""
    loss, spread, norm = (float(row[k]) for k in ("loss", "embedding_spread", "embedding_norm"))
    return abs(loss - margin) <= 0.02 * margin and spread < 0.01 * max(norm, 1e-2)


@pytest.fixture(scope="module")
def collapse_sweep(tmp_path_factory):
    """``run.py -m`` over two jobs, the same but for weight decay: 0 trains, 1.0 collapses.
    Returns (sweep folder, the process, {weight decay: summary.csv row})."""
    sweep = tmp_path_factory.mktemp("collapse") / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            *COLLAPSING,
            f"trainer.collapse_patience={PATIENCE}",
            "trainer.weight_decay=0,1.0",
            "eval.sample_queries=50",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_decay = {r["overrides"].split("trainer.weight_decay=")[1].split()[0]: r for r in rows}
    assert len(rows) == 2 and set(by_decay) == {"0", "1.0"}
    return sweep, proc, by_decay


def test_sweep_with_a_collapsed_job_succeeds(collapse_sweep):
    """A collapse is a result, not a failure: the sweep exits 0 and its table says so."""
    _, proc, by_decay = collapse_sweep
    assert by_decay["0"]["status"] == "ok" and by_decay["0"]["error"] == ""
    assert by_decay["1.0"]["status"] == "collapsed" and "semi_hard" in by_decay["1.0"]["error"]
    assert "jobs failed" not in proc.stdout + proc.stderr


def test_collapse_stops_the_run_after_patience_epochs_with_advice(collapse_sweep):
    sweep, _, by_decay = collapse_sweep
    run_dir = sweep / by_decay["1.0"]["run_dir"]
    rows = read_rows(run_dir)
    flags = [looks_collapsed(r) for r in rows]
    # It stopped at the first epoch that ended PATIENCE collapsed epochs in a row, before
    # its trainer.epochs (6).
    assert len(rows) < 6
    assert flags[-PATIENCE:] == [True] * PATIENCE
    assert not any(all(flags[i : i + PATIENCE]) for i in range(len(flags) - PATIENCE)), (
        "a streak of PATIENCE collapsed epochs ended earlier and training went on"
    )
    summary = read_summary(run_dir)
    assert summary["status"] == "collapsed"
    assert summary["epochs_done"] == len(rows)
    error = summary["error"]
    assert "collapsed" in error
    for advice in ("trainer.learning_rate", "mining=semi_hard"):
        assert advice in error
    assert error in (run_dir / "run.log").read_text()  # logged, not only recorded
    # A collapsed run is a result: it has its model and final metrics, from a full
    # evaluation of the epoch it stopped at (the epochs before ranked a sample of queries).
    assert (run_dir / "model" / "embedding_model.keras").is_file()
    assert [r["eval_queries"] == "50" for r in rows] == [True] * (len(rows) - 1) + [False]
    assert rows[-1]["knn_accuracy"] != "" and summary["metrics"]["knn_accuracy"] is not None
    assert summary["metrics"]["precision_at_1"] == pytest.approx(float(rows[-1]["precision_at_1"]))
    # The job that did not collapse ran all its epochs.
    assert len(read_rows(sweep / by_decay["0"]["run_dir"])) == 6


def test_collapsed_run_is_not_trained_again(collapse_sweep, tmp_path):
    sweep, _, by_decay = collapse_sweep
    run_dir = tmp_path / "collapsed"
    shutil.copytree(sweep / by_decay["1.0"]["run_dir"], run_dir)
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    assert len(stamps) > 1
    before = (run_dir / "metrics.csv").read_bytes()
    summary = read_summary(run_dir)
    cfg = tripletlab.compose(
        [*COLLAPSING, f"trainer.collapse_patience={PATIENCE}", "trainer.weight_decay=1.0"]
    )
    value = tripletlab.train(cfg, run_dir)
    assert (run_dir / "metrics.csv").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert read_summary(run_dir)["status"] == "collapsed"
    assert value == pytest.approx(summary["metrics"]["precision_at_1"])


@pytest.mark.parametrize(
    ("every", "sample_queries", "full_every", "want"),
    [
        # per epoch 1..6: "-" no evaluation, "s" sampled, "F" full
        (1, 2000, 0, "sssssF"),
        (2, 2000, 0, "-s-s-F"),
        (2, 2000, 3, "-sFs-F"),
        (5, None, 0, "----FF"),  # sample_queries=null: every evaluation is full, no more
        (1, None, 0, "FFFFFF"),
    ],
)
def test_evaluation_schedule(every, sample_queries, full_every, want):
    from types import SimpleNamespace

    from tripletlab.training.loop import evaluation_due, full_evaluation_due

    cfg = SimpleNamespace(every=every, sample_queries=sample_queries, full_every=full_every)
    got = ""
    for epoch in range(1, 7):
        if not evaluation_due(cfg, epoch, 6):
            got += "-"
        else:
            got += "F" if full_evaluation_due(cfg, epoch, 6) else "s"
    assert got == want


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs mounted at tmp_path/disk (needs root), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", disk]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", disk], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """Fill ``disk`` until about ``leave_bytes`` are free; the filler file."""
    import os

    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with filler.open("wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))
    return filler


def test_a_full_disk_is_one_message_and_the_last_checkpoint_stays_good(small_disk):
    from tripletlab.errors import StorageError

    run = small_disk / "run"
    overrides = [*TINY, "model.num_channels=32", "trainer.steps_per_epoch=4"]
    train(compose([*overrides, "trainer.epochs=1"]), run)
    filler = _fill(small_disk, leave_bytes=64 * 1024)  # less than a checkpoint of this model

    with pytest.raises(StorageError, match=r"disk is full \(No space left on device\)") as err:
        train(compose([*overrides, "trainer.epochs=2"]), run)
    assert "rerun the same command" in str(err.value)
    assert latest_checkpoint(run).endswith("ckpt-1")
    assert not list((run / "checkpoints").glob("*_temp*"))
    assert not list((run / "checkpoints").glob("ckpt-2*"))

    filler.unlink()  # space again: the same command resumes after epoch 1
    train(compose([*overrides, "trainer.epochs=2"]), run)
    assert [r["epoch"] for r in _rows(run)] == ["1", "2"]
    assert read_summary(run)["status"] == "ok"
