"""tripletlab.summarize's markdown report and summary_stats.csv in-process, on run folders
written by hand: the cases mutation testing found unchecked (issue 27)."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from tests.summarize.folders import CONFIG, SPEC, write_run, write_spec
from tripletlab.summarize import STATS_COLUMNS, collect_rows, markdown_table, write_summary
from tripletlab.summarize.tables import report

# precision@1 per configuration, best first (SPEC): margin 0.3, margin 0.2, semi_hard.
BEST, BASE, SEMI = [0.90, 0.91, 0.95], [0.80, 0.84, 0.82], [0.70, 0.74]


def _table(markdown: str) -> list[dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(split[0], cells, strict=True)) for cells in split[2:]]


def _mean_std(values) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _signed(diff, interval) -> str:
    return f"{diff:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]"


def test_the_report_table_has_every_column_with_its_numbers(tmp_path):
    rows = write_spec(tmp_path, SPEC)
    markdown = report(rows, "precision_at_1")
    table = _table(markdown)
    assert list(table[0]) == [
        "rank",
        "model",
        "mining",
        "setting",
        "n",
        "status",
        "precision_at_1 (mean ± std)",
        "95% CI (t)",
        "Δ vs best [95% CI]",
        "test",
        "p (Holm)",
        "vs best",
        "recall_at_4",
        "map_at_r",
        "knn_accuracy",
        "train s",
        "img/s",
    ]
    best, base, semi = table
    assert [r["rank"] for r in table] == ["1", "2", "3"]
    assert [r["model"] for r in table] == ["lenet"] * 3
    assert [r["setting"] for r in table] == ["mining.margin=0.3", "(base)", "(base)"]
    assert [r["n"] for r in table] == ["3", "3", "2"]
    metric = "precision_at_1 (mean ± std)"
    assert [r[metric] for r in table] == [_mean_std(v) for v in (BEST, BASE, SEMI)]
    half = [v / 2 for v in BEST]
    assert best["map_at_r"] == _mean_std(half) and best["recall_at_4"] == "-"
    t = sp.t.interval(0.95, 2, loc=np.mean(BEST), scale=sp.sem(BEST))
    assert best["95% CI (t)"] == f"[{t[0]:.4f}, {t[1]:.4f}]"
    assert best["Δ vs best [95% CI]"] == "-" and best["vs best"] == "reference"
    paired = sp.ttest_rel(BASE, BEST)
    assert base["Δ vs best [95% CI]"] == _signed(-0.10, paired.confidence_interval(0.95))
    assert (base["test"], semi["test"]) == ("paired", "Welch")
    # Seeds 1-3 (10, 20, 30 s; 100-300 img/s), seeds 4-5 (40, 50 s).
    assert (base["train s"], base["img/s"], semi["train s"]) == ("20.0", "200", "45.0")
    assert "minus the best configuration" in markdown
    assert "minus the baseline" in report(rows, "precision_at_1", reference=1, ref_name="x")


def test_runs_that_did_not_finish_are_listed_below_with_their_error_cut(tmp_path):
    write_spec(tmp_path, SPEC)
    config = {**CONFIG, "mining": {"strategy": "batch_hard", "margin": 0.2}, "seed": 9}
    write_run(tmp_path / "z_failed", config=config, status="failed", error="x" * 400)
    rows = collect_rows([tmp_path])
    markdown = report(rows, "precision_at_1")
    base = _table(markdown)[1]
    assert base["status"] == "3 ok, 1 failed" and base["n"] == "3"
    below = markdown.split("\n\n1 run did not finish:\n")[1]
    assert below == f"- `{tmp_path / 'z_failed'}` (failed): {'x' * 297}...\n"


def test_a_bar_in_a_cell_or_header_does_not_split_the_markdown_column():
    text = markdown_table(pd.DataFrame({"a|b": ["x|y"], "c": ["1"]}))
    assert text.endswith(" |\n") and not text.endswith("\n\n")
    header, _, cells = text.splitlines()
    assert header.split(" | ")[0].strip("| ") == "a\\|b"
    assert cells.split(" | ")[0].strip("| ") == "x\\|y"


def test_summary_stats_csv_has_each_configuration_and_metric(tmp_path):
    rows = write_spec(tmp_path, SPEC)
    write_summary(rows, tmp_path, "precision_at_1", plot=False)
    with (tmp_path / "summary_stats.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == STATS_COLUMNS
        stats = {(r["setting"], r["mining"], r["metric"]): r for r in reader}
    best = stats[("mining.margin=0.3", "batch_hard", "precision_at_1")]
    assert (best["rank"], best["reference"], best["verdict"]) == ("1", "True", "reference")
    assert float(best["mean"]) == pytest.approx(np.mean(BEST))
    assert float(best["std"]) == pytest.approx(np.std(BEST, ddof=1))
    base = stats[("", "batch_hard", "precision_at_1")]
    paired = sp.ttest_rel(BASE, BEST)
    interval = paired.confidence_interval(0.95)
    assert base["test"] == "paired" and float(base["diff"]) == pytest.approx(-0.10)
    assert float(base["diff_low"]) == pytest.approx(interval.low)
    assert float(base["diff_high"]) == pytest.approx(interval.high)
    assert float(base["p"]) == pytest.approx(paired.pvalue)
    semi_map = stats[("", "semi_hard", "map_at_r")]
    assert semi_map["n"] == "2" and float(semi_map["mean"]) == pytest.approx(0.36)


def test_a_single_seed_has_no_interval_and_a_failure_without_error_says_so(tmp_path):
    """One finished run: its mean alone, "one seed" for the interval; a failed run that
    recorded no error is listed as such, not as "None"."""
    write_run(tmp_path / "a")
    config = {**CONFIG, "mining": {"strategy": "batch_hard", "margin": 0.3}}
    write_run(tmp_path / "b", config=config, status="failed", error=None, metrics={})
    markdown = report(collect_rows([tmp_path]), "precision_at_1")
    one, failed = _table(markdown)
    assert (one["precision_at_1 (mean ± std)"], one["95% CI (t)"]) == ("0.8000", "one seed")
    assert (failed["precision_at_1 (mean ± std)"], failed["95% CI (t)"]) == ("-", "-")
    assert markdown.endswith(f"- `{tmp_path / 'b'}` (failed): no error recorded\n")


def test_n_says_how_many_seeds_have_the_metric_and_which_seed_ran_twice(tmp_path):
    """Three seeds finished, one without precision@1: n reads "2 of 3" beside the mean and
    the interval of those two (t with 1 degree of freedom), not a bare 3. Seed 1 ran twice
    (a copied folder): the report says it counts once."""
    values = {"s1": (1, 0.80), "s1_copy": (1, 0.80), "s2": (2, 0.84), "s3": (3, None)}
    for name, (seed, value) in values.items():
        write_run(
            tmp_path / name, config={**CONFIG, "seed": seed}, metrics={"precision_at_1": value}
        )
    markdown = report(collect_rows([tmp_path]), "precision_at_1")
    row = _table(markdown)[0]
    low, high = sp.t.interval(0.95, 1, loc=0.82, scale=sp.sem([0.80, 0.84]))
    assert (row["n"], row["status"]) == ("2 of 3", "ok")
    assert row["precision_at_1 (mean ± std)"] == _mean_std([0.80, 0.84])
    assert row["95% CI (t)"] == f"[{low:.4f}, {high:.4f}]"
    assert "(the mean of its runs): lenet batch_hard: seed 1 ran 2 times." in markdown


def test_a_mean_that_overflows_is_shown_missing_in_the_table_and_the_plot(tmp_path):
    """Two seeds of 1e308 (a corrupt summary): no "inf ± inf", no "one seed" for n = 2, no
    "+nan" in Δ, no verdict; summary.png marks it "no value" and keeps a finite axis."""
    from tripletlab.plots import comparison_figure
    from tripletlab.summarize import group_rows

    for strategy, values in (("batch_hard", [1e308, 1e308]), ("semi_hard", [0.5, 0.6])):
        for seed, value in enumerate(values, 1):
            config = {**CONFIG, "seed": seed, "mining": {"strategy": strategy, "margin": 0.2}}
            write_run(
                tmp_path / f"{strategy}{seed}", config=config, metrics={"precision_at_1": value}
            )
    rows = collect_rows([tmp_path])
    row = {r["mining"]: r for r in _table(report(rows, "precision_at_1"))}["batch_hard"]
    cells = ("precision_at_1 (mean ± std)", "95% CI (t)", "Δ vs best [95% CI]", "vs best")
    assert [row[c] for c in cells] == ["-", "-", "-", "no value"]
    ax = comparison_figure(group_rows(rows, "precision_at_1"), "precision_at_1").axes[0]
    assert all(np.isfinite(ax.get_xlim()))
    assert [t.get_text() for t in ax.texts].count("no value") == 1


def test_a_p_value_beside_0_05_is_shown_on_its_side_of_it(tmp_path):
    """Holm p 0.049960 ("distinguishable") and 0.050040 ("not"): both rounded to 0.0500
    before, one of them beside a verdict that 0.0500 contradicts; shown with the digits
    that tell them apart. A p of exactly 0.05 (Holm: 2 x 0.025) is not below 0.05."""
    from tripletlab.summarize import stats

    for x, shown, verdict in (
        (0.61707, "0.04996", "distinguishable at 95%"),
        (0.6171, "0.05004", "not distinguishable"),
    ):
        folder = tmp_path / str(x)
        for strategy, values in (("batch_hard", [0.6, x]), ("semi_hard", [0.5, 0.5])):
            for seed, value in enumerate(values, 1):
                config = {**CONFIG, "seed": seed, "mining": {"strategy": strategy, "margin": 0.2}}
                write_run(
                    folder / f"{strategy}{seed}", config=config, metrics={"precision_at_1": value}
                )
        row = _table(report(collect_rows([folder]), "precision_at_1"))[1]
        assert (row["p (Holm)"], row["vs best"]) == (shown, verdict)
    holm = stats.holm([0.025, 0.5])
    assert holm[0] == 0.05
    exact = stats.Comparison("paired", 0.1, 0.01, 0.19, 0.025, 1.0, 2, 2)
    assert stats.verdict(exact, holm[0]) == "not distinguishable"
