"""tripletlab.summarize.group_rows, find_baseline and compare_groups in-process, on run
folders written by hand: the cases mutation testing found unchecked (issue 27)."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sp

from tests.summarize.folders import CONFIG, SPEC, write_run, write_spec
from tripletlab.errors import TripletLabError
from tripletlab.summarize import collect_rows, compare_groups, group_rows
from tripletlab.summarize.groups import find_baseline


def test_configurations_are_runs_equal_but_for_seed_and_threads(tmp_path):
    """Three configurations, best mean first; each labelled by the overrides that set it
    apart, its model and mining (own columns) and its seed left out."""
    groups = group_rows(write_spec(tmp_path, SPEC), "precision_at_1")
    assert list(groups["mining"]) == ["batch_hard", "batch_hard", "semi_hard"]
    assert list(groups["label"]) == ["mining.margin=0.3", "", ""]
    assert list(groups["n"]) == [3, 3, 2]
    assert [sorted(s) for s in groups["_seeds"]] == [[1, 2, 3], [1, 2, 3], [4, 5]]
    assert groups["precision_at_1.mean"].tolist() == pytest.approx([0.92, 0.82, 0.72])
    assert list(groups.index) == [0, 1, 2]


def test_runs_without_a_config_are_configurations_by_overrides_and_folder(tmp_path):
    """No config (summary written before it was known, no Hydra copy): the overrides but
    the seed, within one folder, make a configuration."""
    for folder in ("one", "two"):
        for seed, margin in ((1, 0.2), (2, 0.2), (1, 0.3)):
            write_run(
                tmp_path / folder / f"m{margin}_s{seed}",
                config=None,
                overrides=[f"mining.margin={margin}", f"seed={seed}"],
            )
    groups = group_rows(collect_rows([tmp_path]), "precision_at_1")
    assert sorted(groups["runs"]) == [1, 1, 2, 2]
    # The same overrides in two folders: two rows that say where each comes from.
    margins = ("mining.margin=0.2", "mining.margin=0.3")
    assert sorted(groups["label"]) == [f"{m} from {f}" for m in margins for f in ("one", "two")]


def test_a_baseline_is_found_by_run_config_values(tmp_path):
    """``mining=x`` is mining.strategy, numbers compare as numbers; no match and several
    matches are one line each, the first listing the configurations."""
    groups = group_rows(write_spec(tmp_path, SPEC), "precision_at_1")
    assert find_baseline(groups, "mining=batch_hard,mining.margin=0.20") == 1
    assert find_baseline(groups, " mining = semi_hard ") == 2
    assert find_baseline(groups, "mining.margin=0.3") == 0
    with pytest.raises(TripletLabError, match="no configuration matches") as err:
        find_baseline(groups, "mining=batch_hard,trainer.nothing=1")
    assert "batch_hard mining.margin=0.3; batch_hard; semi_hard" in str(err.value)
    with pytest.raises(TripletLabError, match="2 configurations match"):
        find_baseline(groups, "mining=batch_hard")
    with pytest.raises(TripletLabError, match="write KEY=VALUE"):
        find_baseline(groups, "batch_hard")


def test_each_configuration_is_compared_with_the_reference(tmp_path):
    """Against the reference (position 1: margin 0.2): the same seeds paired, others by
    Welch, Holm over the two; the reference's own row is empty."""
    groups = group_rows(write_spec(tmp_path, SPEC), "precision_at_1")
    compared = compare_groups(groups, "precision_at_1", reference=1)
    assert list(compared["test"]) == ["paired", "", "welch"]
    assert compared["verdict"][1] == "reference"
    assert math.isnan(compared["diff"][1]) and math.isnan(compared["p_holm"][1])
    paired = sp.ttest_rel([0.90, 0.91, 0.95], [0.80, 0.84, 0.82])
    welch = sp.ttest_ind([0.70, 0.74], [0.80, 0.84, 0.82], equal_var=False)
    assert compared["diff"][0] == pytest.approx(0.10)
    assert compared["diff"][2] == pytest.approx(0.72 - 0.82)
    assert compared["p"][0] == pytest.approx(paired.pvalue)
    assert compared["p"][2] == pytest.approx(welch.pvalue)
    low, high = sorted((paired.pvalue, welch.pvalue))
    holm = [min(1.0, 2 * low), max(min(1.0, 2 * low), high)]
    assert sorted(compared["p_holm"].dropna()) == pytest.approx(holm)


def test_a_baseline_value_is_read_as_the_user_writes_it(tmp_path):
    """``true`` picks a True setting (YAML's spelling, not Python's), and a value that holds
    ``=`` is one value: no match is one line, not a traceback."""
    for soft in (True, False):
        for seed in (1, 2):
            config = {**CONFIG, "seed": seed, "mining": {**CONFIG["mining"], "soft": soft}}
            write_run(tmp_path / f"{soft}_{seed}", config=config)
    groups = group_rows(collect_rows([tmp_path]), "precision_at_1")
    soft_first = [flat["mining.soft"] for flat in groups["_flat"]]
    assert find_baseline(groups, "mining.soft=true") == soft_first.index(True)
    assert find_baseline(groups, "mining.soft=False") == soft_first.index(False)
    with pytest.raises(TripletLabError, match="no configuration matches"):
        find_baseline(groups, "dataset.name=digits=1")


def test_configurations_that_tie_keep_the_order_of_their_runs(tmp_path):
    """Equal means (or none: every run failed) and no label to tell them apart (their model
    does): the configurations stay in the order of their runs' folders, and with equal
    means a label sorts them alphabetically."""
    for name, model in (("a", "vgg_gap"), ("b", "lenet"), ("c", "small_cnn")):
        config = {**CONFIG, "model": {"name": model}}
        write_run(tmp_path / "failed" / name, config=config, status="failed", metrics={})
    groups = group_rows(collect_rows([tmp_path / "failed"]), "precision_at_1")
    assert list(groups["label"]) == ["", "", ""]
    assert list(groups["model"]) == ["vgg_gap", "lenet", "small_cnn"]
    for name, margin in (("a", 0.1), ("b", 0.3), ("c", 0.2)):
        config = {**CONFIG, "mining": {"strategy": "batch_hard", "margin": margin}}
        write_run(tmp_path / "ok" / name, config=config, overrides=[f"mining.margin={margin}"])
    groups = group_rows(collect_rows([tmp_path / "ok"]), "precision_at_1")
    assert list(groups["label"]) == [f"mining.margin={m}" for m in (0.1, 0.2, 0.3)]


def test_a_seed_that_ran_twice_counts_once(tmp_path):
    """A run folder copied (and a rerun into another folder) gives a configuration the same
    seed twice: one observation of that seed (the mean of its runs), so n is the seeds, the
    seeds pair again, and two identical copies of one seed each are not "distinguishable"
    at p = 0. Bug: each run counted, n = 4 and a zero-width interval from copies."""
    runs = {
        ("batch_hard", 1): [0.90, 0.90],  # a copy
        ("batch_hard", 2): [0.80, 0.84],  # a rerun that differs: its mean, 0.82
        ("semi_hard", 1): [0.85],
        ("semi_hard", 2): [0.78, None],  # the rerun without the metric: 0.78 stands
    }
    for (strategy, seed), values in runs.items():
        for i, value in enumerate(values):
            config = {**CONFIG, "seed": seed, "mining": {"strategy": strategy, "margin": 0.2}}
            write_run(
                tmp_path / f"{strategy}_{seed}_{i}",
                config=config,
                metrics={"precision_at_1": value},
            )
    groups = group_rows(collect_rows([tmp_path]), "precision_at_1")
    assert list(groups["mining"]) == ["batch_hard", "semi_hard"]
    assert list(groups["n"]) == [2, 2] and list(groups["runs"]) == [4, 3]
    assert groups["_repeats"][0] == {1: 2, 2: 2} and groups["_repeats"][1] == {2: 2}
    assert groups["precision_at_1.std"][0] == pytest.approx(sp.tstd([0.90, 0.82]))
    compared = compare_groups(groups, "precision_at_1")
    assert compared["test"][1] == "paired"
    want = sp.ttest_rel([0.85, 0.78], [0.90, 0.82])
    assert compared["p"][1] == pytest.approx(want.pvalue)

    copies = tmp_path / "copies"  # one seed each, each copied: no interval, no test
    for strategy, value in (("batch_hard", 0.9), ("semi_hard", 0.8)):
        for i in range(2):
            config = {**CONFIG, "mining": {"strategy": strategy, "margin": 0.2}}
            write_run(copies / f"{strategy}{i}", config=config, metrics={"precision_at_1": value})
    groups = group_rows(collect_rows([copies]), "precision_at_1")
    assert list(groups["n"]) == [1, 1]
    assert list(compare_groups(groups, "precision_at_1")["verdict"]) == [
        "reference",
        "one seed: no interval",
    ]


def test_configurations_that_would_read_the_same_are_set_apart(tmp_path):
    """Two sweeps with the same overrides but another config (a default changed between
    them), and two summary.csv files of sweeps with the same overrides: each row says what
    sets it apart (the config keys that differ, else the file). Bug: two rows "lenet
    batch_hard" with different numbers, one "distinguishable" from the other."""
    from tripletlab.summarize import write_summary

    for sweep, epochs in (("a", 3), ("b", 5)):
        for seed in (1, 2):
            config = {**CONFIG, "seed": seed, "trainer": {**CONFIG["trainer"], "epochs": epochs}}
            write_run(
                tmp_path / sweep / f"s{seed}",
                config=config,
                overrides=["mining=batch_hard", f"seed={seed}"],
                metrics={"precision_at_1": 0.8 + epochs / 100 + seed / 1000},
            )
    groups = group_rows(collect_rows([tmp_path]), "precision_at_1")
    assert list(groups["label"]) == ["trainer.epochs=5", "trainer.epochs=3"]
    for sweep in ("a", "b"):
        rows = collect_rows([tmp_path / sweep], relative_to=tmp_path / sweep)
        write_summary(rows, tmp_path / sweep, "precision_at_1", plot=False)
    tables = [tmp_path / s / "summary.csv" for s in ("a", "b")]
    groups = group_rows(collect_rows(tables), "precision_at_1")
    assert list(groups["label"]) == ["trainer.epochs=5", "trainer.epochs=3"]  # its columns
    # A CSV beside a folder: only the keys both have set them apart (not "mining=None").
    groups = group_rows(collect_rows([tables[0], tmp_path / "b"]), "precision_at_1")
    assert list(groups["label"]) == ["trainer.epochs=5", "trainer.epochs=3"]
    (tmp_path / "c").mkdir()  # the same table for runs elsewhere: nothing in it differs
    (tmp_path / "c" / "summary.csv").write_text(tables[0].read_text())
    groups = group_rows(collect_rows([tables[0], tmp_path / "c" / "summary.csv"]), "map_at_r")
    assert list(groups["label"]) == ["from a/summary.csv", "from c/summary.csv"]
    with pytest.raises(TripletLabError, match="differ only by the folder or summary.csv"):
        find_baseline(groups, "mining=batch_hard")
