"""The training benchmark: one row per model and precision, float32 beside the others."""

import csv

import pytest

from tripletlab.bench import train as bench_train


def test_train_benchmark_compares_precisions(tmp_path, capsys):
    path = tmp_path / "train.csv"
    args = [
        "--models", "small_cnn", "--precision", "off", "bfloat16", "--steps", "2",
        "--warmup", "1", "--dataset", "random", "--max-images", "1024", "--csv", str(path),
    ]  # fmt: skip
    assert bench_train.main(args) == 0
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["precision"]) for r in rows] == [
        ("small_cnn", "off"),
        ("small_cnn", "bfloat16"),
    ]
    assert float(rows[0]["speedup_vs_float32"]) == 1.0
    assert float(rows[1]["speedup_vs_float32"]) > 0
    for r in rows:
        assert float(r["images_per_second"]) > 0 and float(r["gflops"]) > 0
        # the loss alone is a part of the step: timed, and its share is loss / step
        share = float(r["loss_ms"]) / float(r["ms_per_step"])
        assert 0 < float(r["loss_share"]) == pytest.approx(share, abs=2e-3)
    # the precision policy is put back for whatever runs next in this process
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"
    out = capsys.readouterr().out
    assert "| small_cnn | bfloat16 |" in out and str(path) in out
