"""The input-pipeline benchmark, and the train benchmark on a pretrained backbone."""

from __future__ import annotations

import csv

import pytest

from tripletlab.bench import data as bench_data


def test_data_benchmark_streams_generated_jpegs(tmp_path, capsys):
    out, path = tmp_path / "jpegs", tmp_path / "data.csv"
    args = [
        "--make-jpegs", "48", "--out", str(out), "--classes", "4", "--jpeg-size", "40x30",
        "--image-size", "32", "--batch-size", "8", "--classes-per-batch", "2",
        "--steps", "2", "--warmup", "1", "--csv", str(path),
    ]  # fmt: skip
    assert bench_data.main(args) == 0
    assert len(list(out.glob("class_*/*.jpg"))) == 48
    with path.open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["streamed"] == "True" and int(row["images"]) == 48 and int(row["batch"]) == 8
    assert float(row["images_per_second"]) > 0
    assert float(row["peak_rss_mb"]) >= float(row["rss_after_index_mb"]) > 0
    assert "| 48 |" in capsys.readouterr().out
    assert bench_data.main(args) == 0  # appends, and the JPEGs are not written again
    with path.open() as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.mark.slow  # a MobileNetV3 built and traced: about 15 s
def test_train_benchmark_times_a_pretrained_backbone(tmp_path):
    from tripletlab.bench import train as bench_train

    path = tmp_path / "train.csv"
    args = [
        "--models", "mobilenetv3_small", "--image-size", "32", "--skip-eval",
        "--precision", "off", "--steps", "1", "--warmup", "1", "--csv", str(path),
    ]  # fmt: skip
    assert bench_train.main(args) == 0
    with path.open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "mobilenetv3_small" and row["image_shape"] == "32x32x3"
    assert float(row["images_per_second"]) > 0 and float(row["mflop_per_image"]) > 1
