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


# ------------------------------------------------------------------ statistics in the summary
def test_summary_md_has_the_t_interval_and_says_one_seed(summarized):
    _, out, _, _ = summarized
    lenet, hard, collapsed = _table((out / "summary.md").read_text())
    # lenet: mean 0.85, std 0.05568, t(0.975, 2) = 4.3027: half width 0.1383.
    assert lenet["95% CI (t)"] == "[0.7117, 0.9883]"
    assert lenet["vs best"] == "reference" and lenet["Δ vs best [95% CI]"] == "-"
    # One run each: no interval, so no difference shown (without its interval it is not a
    # result; summary_stats.csv keeps the raw diff) and no p-value.
    assert hard["95% CI (t)"] == "one seed" and hard["Δ vs best [95% CI]"] == "-"
    assert hard["vs best"] == "one seed: no interval" and hard["p (Holm)"] == "-"
    assert collapsed["vs best"] == "one seed: no interval"


# mining: (seeds, precision_at_1 per seed, map_at_r per seed; None: missing)
STATS_RUNS = {
    "semi_hard": ([1, 2, 3], [0.90, 0.92, 0.94], [0.50, 0.52, 0.54]),
    "batch_hard": ([3, 1, 2], [0.88, 0.85, 0.88], [0.45, 0.40, 0.44]),
    "batch_all": ([4, 5], [0.80, 0.90], [0.30, 0.35]),
    "easy_positive": ([1], [0.91], [0.60]),
    "distance_weighted": ([1, 2, 3], [0.905, 0.915, 0.935], [0.50, None, 0.56]),
}


@pytest.fixture(scope="module")
def stats_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    for mining, (seeds, p1s, maps) in STATS_RUNS.items():
        for seed, p1, map_r in zip(seeds, p1s, maps, strict=True):
            summary = _summary("lenet", mining, seed, "ok", p1, map_r, 10.0, 100.0)
            (root / f"{mining}_{seed}").mkdir()
            (root / f"{mining}_{seed}" / "summary.json").write_text(json.dumps(summary))
    return root


def _summarize(*args):
    return subprocess.run(
        [sys.executable, "-m", "tripletlab.summarize", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _stats_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_comparisons_are_paired_by_seed_or_welch_and_holm_adjusted(stats_runs, tmp_path):
    from scipy import stats as sp

    proc = _summarize(stats_runs, "--out", tmp_path, "--no-plot")
    assert proc.returncode == 0, proc.stderr
    table = {r["mining"]: r for r in _table((tmp_path / "summary.md").read_text())}
    # Best mean precision@1: semi_hard (0.92). Every comparison against it, by scipy:
    ref = [0.90, 0.92, 0.94]
    # batch_hard ran seeds 1-3 too: paired by seed (0.85, 0.88, 0.88 for seeds 1, 2, 3).
    paired = sp.ttest_rel([0.85, 0.88, 0.88], ref)
    # batch_all ran seeds 4, 5: Welch; distance_weighted ran 1-3: paired.
    welch = sp.ttest_ind([0.80, 0.90], ref, equal_var=False)
    dw = sp.ttest_rel([0.905, 0.915, 0.935], ref)
    # Holm over the three (easy_positive's single seed has no p-value and is not counted).
    raw = {"batch_hard": paired.pvalue, "batch_all": welch.pvalue, "distance_weighted": dw.pvalue}
    order = sorted(raw, key=raw.get)
    holm, running = {}, 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (3 - i) * raw[name]))
        holm[name] = running
    assert [table[m]["test"] for m in ("batch_hard", "batch_all", "distance_weighted")] == [
        "paired",
        "Welch",
        "paired",
    ]
    for name, p in holm.items():
        assert table[name]["p (Holm)"] == f"{p:.4f}", name
        words = "distinguishable at 95%" if p < 0.05 else "not distinguishable"
        assert table[name]["vs best"] == words
    interval = paired.confidence_interval(0.95)
    assert table["batch_hard"]["Δ vs best [95% CI]"] == (
        f"{-0.05:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]"
    )
    assert table["easy_positive"]["vs best"] == "one seed: no interval"

    # summary_stats.csv: every metric; a missing MAP@R is missing (n 2), not a 0.
    rows = {(r["mining"], r["metric"]): r for r in _stats_csv(tmp_path / "summary_stats.csv")}
    assert len(rows) == 5 * len(METRICS)
    dw_map = rows[("distance_weighted", "map_at_r")]
    assert dw_map["n"] == "2" and float(dw_map["mean"]) == pytest.approx(0.53)
    # Its seeds with a MAP@R (1, 3) are not the reference's (1, 2, 3): Welch.
    assert dw_map["test"] == "welch"
    assert float(dw_map["p"]) == pytest.approx(
        sp.ttest_ind([0.50, 0.56], [0.50, 0.52, 0.54], equal_var=False).pvalue
    )
    one = rows[("easy_positive", "precision_at_1")]
    assert (one["n"], one["std"], one["ci_low"], one["p"]) == ("1", "", "", "")
    best = rows[("semi_hard", "precision_at_1")]
    assert best["reference"] == "True" and best["verdict"] == "reference"
    low, high = sp.t.interval(0.95, 2, loc=0.92, scale=sp.sem(ref))
    assert float(best["ci_low"]) == pytest.approx(low)
    assert float(best["ci_high"]) == pytest.approx(high)


def test_baseline_picks_the_reference(stats_runs, tmp_path):
    proc = _summarize(
        stats_runs, "--out", tmp_path, "--no-plot", "--baseline", "mining=batch_hard,margin=0.2"
    )
    assert proc.returncode == 1  # no key "margin": the run config's is mining.margin
    assert proc.stderr.startswith("error: --baseline") and "Traceback" not in proc.stderr
    proc = _summarize(
        stats_runs,
        "--out",
        tmp_path,
        "--no-plot",
        "--baseline",
        "mining=batch_hard,mining.margin=0.20",
    )
    assert proc.returncode == 0, proc.stderr
    table = {r["mining"]: r for r in _table((tmp_path / "summary.md").read_text())}
    assert table["batch_hard"]["vs baseline"] == "reference"
    # semi_hard against batch_hard: +0.05, the sign of the paired test above reversed.
    assert table["semi_hard"]["Δ vs baseline [95% CI]"].startswith("+0.0500 [")
    proc = _summarize(stats_runs, "--out", tmp_path, "--no-plot", "--baseline", "model=lenet")
    assert proc.returncode == 1 and "5 configurations match" in proc.stderr


def test_summary_png_shows_intervals_on_an_axis_fitted_to_them(stats_runs):
    from tripletlab.plots import comparison_figure
    from tripletlab.summarize import collect_rows, group_rows

    groups = group_rows(collect_rows([stats_runs]), "precision_at_1")
    ax = comparison_figure(groups, "precision_at_1").axes[0]
    low, high = ax.get_xlim()
    # The intervals span about 0.2 to 1.5 (batch_all's two seeds: a wide t(1) interval);
    # without it the axis would hug 0.85-0.97. Not the old bars from 0.
    assert 0.0 < low < min(groups["precision_at_1.low"].dropna())
    assert high > max(groups["precision_at_1.high"].dropna())
    # One error bar per configuration with >= 2 seeds, none for the single seed.
    bars = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == 4
    narrow = group_rows(collect_rows([stats_runs / "semi_hard_1"]), "precision_at_1")
    ax = comparison_figure(narrow, "precision_at_1").axes[0]
    assert ax.get_xlim()[1] - ax.get_xlim()[0] < 0.1  # one value: a narrow axis around it
