"""tripletlab.summarize.collect_rows in-process, on run folders written by hand: the cases
mutation testing found unchecked (issue 27; tests/test_summarize.py checks the same
command through a subprocess, which mutmut cannot attribute to the module)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.summarize.folders import CONFIG
from tests.summarize.folders import write_run as _run
from tripletlab.summarize import CSV_COLUMNS, collect_rows


def test_a_sweep_s_jobs_are_in_job_number_order_with_their_overrides(tmp_path):
    """Job 10 after job 2 (numbers, not text), whatever the folders are called; the job's
    overrides as one cell. Bug: the job number not read (every run job 0: folder order)."""
    sweep = tmp_path / "sweep"
    _run(sweep / "a", job=10, overrides=["mining.margin=0.3", "seed=2"])
    _run(sweep / "b", job=2, overrides=["mining.margin=0.1"])
    _run(sweep / "c", job=0)
    rows = collect_rows([sweep])
    assert list(rows["job"]) == [0, 2, 10]
    assert [Path(p).name for p in rows["run_dir"]] == ["c", "b", "a"]
    assert list(rows["overrides"]) == ["", "mining.margin=0.1", "mining.margin=0.3 seed=2"]


def test_single_runs_have_no_job_and_come_after_a_sweep_s_jobs_in_their_folder(tmp_path):
    """hydra.yaml of a single run (mode RUN): no job number, even where it records one."""
    _run(tmp_path / "z_sweep_job", job=5)
    single = _run(tmp_path / "a_single")
    (single / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"mode": "RUN_MODE.RUN", "job": {"num": 0}}})
    )
    rows = collect_rows([tmp_path])
    assert [Path(p).name for p in rows["run_dir"]] == ["z_sweep_job", "a_single"]
    assert rows["job"][0] == 5 and rows["job"][1] is None


def test_a_row_s_batch_size_is_p_times_k_for_the_pk_sampler(tmp_path):
    """P x K = 4 x 8 = 32 images a batch with the pk sampler, trainer.batch_size (64)
    otherwise."""
    _run(tmp_path / "pk")
    _run(tmp_path / "random", config={**CONFIG, "sampler": {"name": "random"}})
    rows = collect_rows([tmp_path])
    assert dict(zip(rows["sampler"], rows["batch_size"], strict=True)) == {"pk": 32, "random": 64}


def test_missing_precision_status_and_config_are_filled_from_what_the_run_kept(tmp_path):
    """A summary without ``precision`` shows the config's trainer.mixed_precision; one
    without a status is "unknown"; one without a config takes Hydra's saved copy."""
    saved = {**CONFIG, "trainer": {**CONFIG["trainer"], "mixed_precision": "bfloat16"}}
    _run(tmp_path / "a", precision=..., status=...)
    _run(tmp_path / "b", config=None, saved_config=saved)
    rows = collect_rows([tmp_path]).set_index(collect_rows([tmp_path])["run_dir"].map(_name))
    assert rows.loc["a", "precision"] == "off" and rows.loc["a", "status"] == "unknown"
    assert rows.loc["b", "precision"] == "float32"  # the summary's, when it has one
    assert rows.loc["b", "model"] == "lenet" and rows.loc["b", "_config"] == saved
    # The nested config, for the sweep's experiment file (tripletlab.sweep).
    assert rows.loc["a", "_config"] == CONFIG


def test_an_error_is_one_line_and_ints_stay_ints_beside_a_missing_value(tmp_path):
    """summary.csv keeps one line per run, and a best epoch of 3 is "3", not "3.0", when
    another run has none."""
    _run(tmp_path / "a", status="failed", error="diverged in epoch 2,\n  by step 40:\tnan")
    _run(tmp_path / "b", best={"metric": "precision_at_1", "value": None, "epoch": None})
    rows = collect_rows([tmp_path])
    assert rows["error"][0] == "diverged in epoch 2, by step 40: nan"
    assert pd.isna(rows["error"][1])
    text = rows.reindex(columns=CSV_COLUMNS).to_csv(index=False)
    assert len(text.splitlines()) == 3
    cells = list(csv.DictReader(io.StringIO(text)))
    assert [c["best_epoch"] for c in cells] == ["3", ""]
    assert [c["epochs_done"] for c in cells] == ["3", "3"]


def test_run_dirs_inside_the_summary_folder_are_relative(tmp_path):
    _run(tmp_path / "sweep" / "0")
    _run(tmp_path / "elsewhere")
    rows = collect_rows(
        [tmp_path / "sweep", tmp_path / "elsewhere"], relative_to=tmp_path / "sweep"
    )
    assert list(rows["run_dir"]) == [str(tmp_path / "elsewhere"), "0"]
    assert list(
        collect_rows([tmp_path / "sweep" / "0"], relative_to=tmp_path / "sweep" / "0")["run_dir"]
    ) == ["."]


def _name(run_dir: str) -> str:
    return Path(run_dir).name


def _sweep(folder: Path, memory: int, values: dict[int, float]) -> Path:
    """A sweep folder of one configuration (mining.memory_size=memory), one job a seed."""
    for job, (seed, value) in enumerate(values.items()):
        config = {**CONFIG, "seed": seed, "mining": {**CONFIG["mining"], "memory_size": memory}}
        _run(
            folder / str(job),
            config=config,
            job=job,
            overrides=[f"mining.memory_size={memory}", f"seed={seed}"],
            metrics={"precision_at_1": value, "map_at_r": value / 2},
        )
    return folder


def test_a_summary_csv_stands_for_its_runs_once_their_folders_are_gone(tmp_path):
    """Two sweeps summarised apart, their run folders deleted, then both summary.csv
    files summarised together: each configuration keeps its n, mean, interval and paired
    comparison, and --baseline finds a configuration by an override key."""
    import shutil

    from tripletlab.summarize import write_summary

    first = _sweep(tmp_path / "a", 0, {1: 0.80, 2: 0.82, 3: 0.81})
    second = _sweep(tmp_path / "b", 1024, {1: 0.90, 2: 0.91, 3: 0.93})
    both = tmp_path / "both"
    write_summary(collect_rows([first, second], relative_to=both), both, "precision_at_1")
    for folder in (first, second):
        write_summary(collect_rows([folder], relative_to=folder), folder, "precision_at_1")
        for job in ("0", "1", "2"):
            shutil.rmtree(folder / job)
    again = tmp_path / "again"
    rows = collect_rows([first / "summary.csv", second / "summary.csv"], relative_to=again)
    assert list(rows["seed"]) == [1, 2, 3, 1, 2, 3]  # ints, in file order
    assert list(rows["batch_size"]) == [32] * 6
    assert list(rows["run_dir"]) == [f"../{s}/{j}" for s in "ab" for j in "012"]
    write_summary(rows, again, "precision_at_1", baseline="mining.memory_size=0")
    want = pd.read_csv(both / "summary_stats.csv")
    got = pd.read_csv(again / "summary_stats.csv")
    # the earlier table compared with the best (memory 1024); this one with memory 0
    best = want[want["metric"] == "precision_at_1"]
    again_best = got[got["metric"] == "precision_at_1"]
    settings = ["mining.memory_size=1024", "mining.memory_size=0"]
    assert list(again_best["setting"]) == list(best["setting"]) == settings
    for column in ("n", "mean", "std", "ci_low", "ci_high"):
        assert list(again_best[column]) == pytest.approx(list(best[column]))
    assert list(again_best["verdict"])[1] == "reference"
    paired = again_best.iloc[0]
    assert paired["test"] == "paired"
    assert paired["diff"] == pytest.approx(0.91 + 1 / 300 - 0.81, abs=1e-9)  # 1024 minus 0


def test_a_csv_that_is_not_a_summary_is_refused_with_its_first_missing_column(tmp_path):
    table = tmp_path / "other.csv"
    table.write_text("a,b\n1,2\n")
    with pytest.raises(FileNotFoundError, match=r"other.csv is not a summary.csv .*column job"):
        collect_rows([table])


def test_an_unreadable_summary_is_a_failed_row_and_the_others_are_read(tmp_path):
    """A summary.json cut short (a full disk, a copy stopped halfway) is one failed row
    that names it, with the config from Hydra's copy; the other runs are summarised."""
    _run(tmp_path / "a")
    broken = _run(tmp_path / "b", saved_config=CONFIG)
    (broken / "summary.json").write_text('{"status": "ok", "metr')
    rows = collect_rows([tmp_path])
    assert list(rows["status"]) == ["ok", "failed"]
    assert rows["error"][1].startswith(f"unreadable {broken / 'summary.json'}: ")
    assert rows["model"][1] == "lenet"


def test_a_summary_that_is_not_an_object_says_so(tmp_path):
    broken = _run(tmp_path / "a")
    (broken / "summary.json").write_text("[1, 2]")
    error = collect_rows([tmp_path])["error"][0]
    assert error == f"unreadable {broken / 'summary.json'}: not a JSON object"


def test_a_run_counts_once_whether_from_its_folder_or_from_csv_files(tmp_path):
    """The same summary.csv given twice, or beside the sweep folder it summarises, or a
    second CSV listing the same runs: each run is one row, so n and the interval do not
    shrink from counting a seed twice."""
    from tripletlab.summarize import write_summary

    sweep = _sweep(tmp_path / "a", 0, {1: 0.80, 2: 0.82})
    write_summary(collect_rows([sweep], relative_to=sweep), sweep, "precision_at_1")
    table = sweep / "summary.csv"
    other = tmp_path / "other"  # another summary of the same run folders, elsewhere
    write_summary(collect_rows([sweep], relative_to=other), other, "precision_at_1")
    cases = [
        [table, table],
        [sweep, table],
        [table, sweep],
        [table, tmp_path / "a" / ".." / "a" / "summary.csv"],
        [table, other / "summary.csv"],
    ]
    for paths in cases:
        rows = collect_rows(paths, relative_to=tmp_path)
        assert sorted(rows["seed"]) == [1, 2], paths


def test_a_run_folder_whose_name_is_not_utf8_counts_once_beside_its_csv(tmp_path):
    """summary.csv writes a name's byte 0xe9 as the text \\xe9: read back beside the folder
    it names, the run is still one row. Bug: the two spellings compared, seeds twice."""
    import os

    from tripletlab.summarize import write_summary

    sweep = _sweep(tmp_path / "a", 0, {1: 0.80, 2: 0.82})
    os.rename(sweep / "0", sweep / os.fsdecode(b"job\xe9"))
    write_summary(collect_rows([sweep], relative_to=sweep), sweep, "precision_at_1", plot=False)
    assert "job\\xe9" in (sweep / "summary.csv").read_text()
    rows = collect_rows([sweep, sweep / "summary.csv"], relative_to=tmp_path)
    assert sorted(rows["seed"]) == [1, 2]


def test_a_csv_from_an_older_version_or_not_utf8_is_read(tmp_path):
    """The first summary.csv had no precision and knn_accuracy columns: read, those values
    missing (never 0). A file saved in Latin-1 (a run_dir with 0xe9) is read, its byte
    kept. What cannot be parsed is one FileNotFoundError naming the file."""
    old = [c for c in CSV_COLUMNS if c not in ("precision", "knn_accuracy")]
    lines = [",".join(old)]
    for seed, value in ((1, "0.8"), (2, "0.82")):
        cells = {"overrides": f"seed={seed}", "seed": str(seed), "status": "ok"}
        cells |= {"precision_at_1": value, "run_dir": f"r\xe9{seed}"}
        lines.append(",".join(cells.get(c, "") for c in old))
    table = tmp_path / "old.csv"
    table.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    rows = collect_rows([table], relative_to=tmp_path)
    assert list(rows["precision_at_1"]) == [0.8, 0.82]
    assert list(rows["knn_accuracy"]) == [None, None]
    assert list(rows["precision"]) == [None, None]
    assert list(rows["run_dir"]) == ["r\udce91", "r\udce92"]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(FileNotFoundError, match=r"empty.csv cannot be read as a summary.csv"):
        collect_rows([empty])
