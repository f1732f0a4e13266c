"""``python -m tripletlab.summarize`` on run folders written by hand, with known numbers.

No training: each run folder holds only a summary.json in the format of DESIGN.md ("One
run's folder"). Every expected cell (means, sample standard deviations, order, counts) is
worked out by hand in the comments.
"""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tripletlab.config import METRICS

BASE_CONFIG = {
    "dataset": {"name": "digits"},
    "model": {"name": "lenet", "embedding_size": 8},
    "mining": {"strategy": "semi_hard", "margin": 0.2},
    "sampler": {"name": "pk", "classes_per_batch": 4, "images_per_class": 4},
    "trainer": {"epochs": 3, "batch_size": 64, "learning_rate": 0.001, "threads": 0},
    "seed": 1,
    "optimized_metric": "precision_at_1",
}

# folder: (model, mining, seed, status, precision_at_1, map_at_r, train_seconds, img/s)
RUNS = {
    "a_lenet_semi_s1": ("lenet", "semi_hard", 1, "ok", 0.80, 0.50, 10.0, 100.0),
    "b_lenet_semi_s2": ("lenet", "semi_hard", 2, "ok", 0.84, 0.56, 20.0, 200.0),
    "c_lenet_semi_s3": ("lenet", "semi_hard", 3, "ok", 0.91, 0.62, 30.0, 300.0),
    "d_lenet_semi_s4": ("lenet", "semi_hard", 4, "failed", None, None, 5.0, 50.0),
    "e_cnn_hard_s1": ("small_cnn", "batch_hard", 1, "ok", 0.83, 0.40, 12.0, 120.0),
    "f_cnn_all_s1": ("small_cnn", "batch_all", 1, "collapsed", 0.10, 0.05, 8.0, 80.0),
}
DIVERGED = "training diverged in epoch 2, by step 40:\nthe loss became nan"


def _summary(model, mining, seed, status, p1, map_r, train_s, speed):
    config = copy.deepcopy(BASE_CONFIG)
    config["model"]["name"], config["mining"]["strategy"], config["seed"] = model, mining, seed
    finished = p1 is not None
    metrics = {m: (p1 if m in ("precision_at_1", "recall_at_1") else 0.9) for m in METRICS}
    metrics.update(map_at_r=map_r, knn_accuracy=0.7, epoch=3)
    return {
        "status": status,
        "error": None if status == "ok" else (DIVERGED if status == "failed" else "collapsed"),
        "metrics": metrics if finished else {},
        "best": {"metric": "precision_at_1", "value": p1, "epoch": 3 if finished else None},
        "epochs_done": 3 if finished else 1,
        "wall_seconds": train_s + 1.0,
        "train_seconds": train_s,
        "images_per_second": speed,
        "device": "CPU",
        "precision": "off",
        "config": config,
    }


@pytest.fixture(scope="module")
def summarized(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for name, spec in RUNS.items():
        (root / name).mkdir()
        (root / name / "summary.json").write_text(json.dumps(_summary(*spec)))
    out = tmp_path_factory.mktemp("out")
    proc = subprocess.run(
        [sys.executable, "-m", "tripletlab.summarize", str(root), "--out", str(out), "--no-plot"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with (out / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return root, out, rows, proc.stdout


def _table(markdown: str) -> list[dict[str, str]]:
    """The markdown table's rows as dicts keyed by its header."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    header = split[0]
    return [dict(zip(header, cells, strict=True)) for cells in split[2:]]


def test_summary_csv_has_one_row_per_run_with_its_values(summarized):
    root, _, rows, _ = summarized
    assert len(rows) == 6
    by_seed_model = {(r["model"], r["mining"], r["seed"]): r for r in rows}
    assert len(by_seed_model) == 6
    for name, (model, mining, seed, status, p1, map_r, train_s, speed) in RUNS.items():
        row = by_seed_model[(model, mining, str(seed))]
        assert row["status"] == status
        assert row["precision_at_1"] == ("" if p1 is None else str(p1))
        assert row["map_at_r"] == ("" if map_r is None else str(map_r))
        assert float(row["train_seconds"]) == train_s
        assert float(row["images_per_second"]) == speed
        assert row["dataset"] == "digits" and row["sampler"] == "pk"
        assert row["batch_size"] == "16"  # pk: P x K = 4 x 4, not trainer.batch_size
        assert row["margin"] == "0.2" and row["learning_rate"] == "0.001"
        assert row["precision"] == "off"
        assert (root / row["run_dir"]).resolve() == (root / name).resolve()
    failed = by_seed_model[("lenet", "semi_hard", "4")]
    # The error on one line, so that the CSV stays one line per run.
    assert failed["error"] == "training diverged in epoch 2, by step 40: the loss became nan"
    assert failed["epochs_done"] == "1" and failed["best_value"] == ""
    ok = by_seed_model[("lenet", "semi_hard", "2")]
    assert ok["best_metric"] == "precision_at_1"
    assert (ok["best_value"], ok["best_epoch"]) == ("0.84", "3")


def test_summary_md_groups_seeds_with_mean_and_sample_std(summarized):
    _, out, _, printed = summarized
    markdown = (out / "summary.md").read_text()
    table = _table(markdown)
    metric = "precision_at_1 (mean ± std)"
    # Three configurations, best mean precision@1 first:
    #   lenet/semi_hard, seeds 1-3 finished (seed 4 failed): mean (0.80+0.84+0.91)/3 = 0.85;
    #     deviations -0.05, -0.01, 0.06 -> squares 0.0025 + 0.0001 + 0.0036 = 0.0062;
    #     / (3-1) = 0.0031; sqrt = 0.05568 -> "0.8500 ± 0.0557" (the sample std, as
    #     documented; the population std would be sqrt(0.0062/3) = 0.0455).
    #   small_cnn/batch_hard: one run, 0.83 -> "0.8300".
    #   small_cnn/batch_all: collapsed is a result, 0.10 -> "0.1000".
    assert [(r["model"], r["mining"]) for r in table] == [
        ("lenet", "semi_hard"),
        ("small_cnn", "batch_hard"),
        ("small_cnn", "batch_all"),
    ]
    lenet, hard, collapsed = table
    assert lenet["rank"] == "1" and lenet["n"] == "3"
    assert lenet[metric] == "0.8500 ± 0.0557"
    # MAP@R: (0.50+0.56+0.62)/3 = 0.56; deviations -0.06, 0, 0.06 -> 0.0072 / 2 = 0.0036;
    # sqrt = 0.06.
    assert lenet["map_at_r"] == "0.5600 ± 0.0600"
    assert "3 ok" in lenet["status"] and "1 failed" in lenet["status"]
    # Timing over the finished runs only: (10+20+30)/3 = 20.0 s, (100+200+300)/3 = 200 img/s.
    assert lenet["train s"] == "20.0" and lenet["img/s"] == "200"
    assert hard[metric] == "0.8300" and hard["n"] == "1" and hard["status"] == "ok"
    assert collapsed[metric] == "0.1000" and collapsed["status"] == "1 collapsed"
    # Runs that did not finish are listed below the table, with their error.
    lines = markdown.splitlines()
    last_table_line = max(i for i, line in enumerate(lines) if line.startswith("|"))
    below = "\n".join(lines[last_table_line + 1 :])
    assert "1 run did not finish" in below
    assert "d_lenet_semi_s4" in below and "training diverged in epoch 2" in below
    assert "f_cnn_all_s1" not in below  # a collapse is a result
    assert "0.8500 ± 0.0557" in printed  # the table is printed too


def test_summarize_of_no_runs_and_of_a_missing_path_fail(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "tripletlab.summarize", *map(str, args), "--no-plot"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    empty = run(tmp_path)
    assert empty.returncode == 1 and "summary.json" in empty.stderr
    missing = run(tmp_path / "nowhere")
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    assert "Traceback" not in empty.stderr + missing.stderr
