"""The input-pipeline benchmark (throughput, and the peak memory of whole capped runs), and
the train benchmark on a pretrained backbone."""

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


def test_memory_folders_are_written_once_and_linked(tmp_path):
    small = bench_data.jpeg_folder(tmp_path, 6, 12, 3, (16, 16))
    large = bench_data.jpeg_folder(tmp_path, 12, 12, 3, (16, 16))
    assert len(list(large.glob("class_*/*.jpg"))) == 12
    files = sorted(small.glob("class_*/*.jpg"))
    assert [f.name for f in files] == [f"{i:06d}.jpg" for i in (0, 3, 1, 4, 2, 5)]
    for f in files:  # the same images as the large folder's first six, not copies
        assert f.stat().st_ino == (large / f.relative_to(small)).stat().st_ino
    stamp = files[0].stat().st_mtime_ns
    bench_data.jpeg_folder(tmp_path, 6, 12, 3, (16, 16))
    assert files[0].stat().st_mtime_ns == stamp


def _row(images, stream, peak, decoded):
    return {"images": images, "stream": stream, "peak_rss_mb": peak, "decoded_mb": decoded,
            "wall_seconds": 10.0, "status": "ok", "precision": "off"}  # fmt: skip


def test_memory_table_compares_growth_and_the_in_memory_cost(tmp_path):
    rows = [
        _row(2000, "true", 1500.0, 53.0),
        _row(20000, "true", 1700.0, 527.0),
        _row(40000, "true", 1720.0, 1055.0),
        _row(20000, "false", 2300.0, 527.0),
    ]
    lines = bench_data.memory_table(rows).splitlines()
    assert lines[2].startswith("| 2000 | true | 53 | 1500 | +0 |")
    assert lines[3].startswith("| 20000 | true | 527 | 1700 | +200 |")
    assert lines[4].startswith("| 40000 | true | 1055 | 1720 | +220 |")
    # in memory: (2300 - 1700) / 527 MB decoded
    assert lines[5].startswith("| 20000 | false | 527 | 2300 | +800 | 1.14 |")
    args = bench_data.argparse.Namespace(image_size=96, steps=20, jpeg_size=None, classes=100)
    report = tmp_path / "results" / "memory.md"
    bench_data.write_memory_report(report, rows, args, ["--memory", "--table", str(report)])
    text = report.read_text()
    assert "cores of an" in text and "precision: off" in text and "commit " in text
    assert "`python -m tripletlab.bench data --memory --table" in text
    assert "model=mobilenetv3_small" in text and lines[5] in text


@pytest.mark.slow  # four capped runs of MobileNetV3, each in its own process: about 2 min
def test_memory_benchmark_measures_each_case_in_its_own_process(tmp_path, capsys):
    table = tmp_path / "memory.md"
    args = [
        "--memory", "--streamed", "48,96", "--in-memory", "96", "--work", str(tmp_path),
        "--classes", "8", "--jpeg-size", "16x16", "--image-size", "32", "--steps", "1",
        "--table", str(table),
    ]  # fmt: skip
    assert bench_data.main(args) == 0
    out = capsys.readouterr().out
    for case in ("| 48 | true |", "| 96 | true |", "| 96 | false |"):
        assert case in out and case in table.read_text()
    peaks = [float(line.split("|")[4]) for line in out.splitlines() if line.startswith("| 48 ")]
    assert peaks and all(300 < p < 20_000 for p in peaks)  # a TensorFlow process's MB
