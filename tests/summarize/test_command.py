"""``tripletlab-summarize`` in-process (tripletlab.summarize.command.main), on run folders
written by hand: the cases mutation testing found unchecked (issue 27; tests/test_summarize.py
runs the same command in a subprocess, which mutmut cannot attribute to the module)."""

from __future__ import annotations

import csv

import pytest

from tests.summarize.folders import SPEC, write_spec
from tripletlab.summarize.command import main


def _split(spec: dict, root):
    """SPEC's margin-0.2 runs under root/a, the others under root/b."""
    write_spec(root / "a", {k: v for k, v in spec.items() if k.startswith("h2")})
    write_spec(root / "b", {k: v for k, v in spec.items() if not k.startswith("h2")})


def test_the_table_is_printed_then_the_files_written(tmp_path, capsys):
    """Two sweep folders: the summary goes to the folder that holds both, run folders
    relative to it; stdout is the markdown, then one line naming the files."""
    _split(SPEC, tmp_path)
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--no-plot"]) == 0
    out = capsys.readouterr().out
    markdown = (tmp_path / "summary.md").read_text()
    names = ("summary.csv", "summary.md", "summary_stats.csv")
    assert out == markdown + f"wrote {', '.join(str(tmp_path / n) for n in names)}\n"
    assert "3 configurations, sorted by precision_at_1" in markdown
    with (tmp_path / "summary.csv").open(newline="") as f:
        run_dirs = [r["run_dir"] for r in csv.DictReader(f)]
    assert sorted(run_dirs) == sorted(
        f"{d}/{name}" for name in SPEC for d in "ab" if (name.startswith("h2") == (d == "a"))
    )
    assert not (tmp_path / "summary.png").exists()


def test_the_plot_is_written_and_named_unless_no_plot(tmp_path, capsys):
    write_spec(tmp_path, SPEC)
    out_dir = tmp_path / "out"
    assert main([str(tmp_path), "--out", str(out_dir), "--metric", "map_at_r"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith(f"{out_dir / 'summary_stats.csv'}, {out_dir / 'summary.png'}")
    assert (out_dir / "summary.png").stat().st_size > 0
    assert "sorted by map_at_r" in (out_dir / "summary.md").read_text()


def test_the_metric_defaults_to_the_one_the_runs_optimised(tmp_path, capsys):
    """No --metric: the runs' best.metric (map_at_r here), not precision_at_1."""
    from tests.summarize.folders import write_run

    for seed in (1, 2):
        write_run(
            tmp_path / f"s{seed}",
            metrics={"map_at_r": 0.5, "precision_at_1": 0.9},
            best={"metric": "map_at_r", "value": 0.5, "epoch": 3},
        )
    assert main([str(tmp_path), "--no-plot"]) == 0
    assert "sorted by map_at_r" in capsys.readouterr().out


def test_a_user_s_mistake_is_one_line_and_its_exit_status(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: no summary.json under {tmp_path / 'empty'} {tmp_path / 'other'}\n"
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'} does not exist\n"
    write_spec(tmp_path / "runs", SPEC)
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "runs"), "--metric", "accuracy"])
    assert exit_.value.code == 2 and "invalid choice: 'accuracy'" in capsys.readouterr().err


def test_help_names_the_command_its_arguments_and_what_they_do(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(
        "usage: tripletlab-summarize [-h] [--out DIR] [--metric {precision_at_1,"
    )
    assert "[--baseline KEY=VALUE,...] [--no-plot] PATH [PATH ...]" in text
    assert "Compare runs: write summary.csv, summary.md, summary_stats.csv and summary.png" in text
    assert "Student-t 95% interval" in text
    assert "--out DIR where to write the files (default: the folder that holds all PATHs)" in text
    assert "the metric to sort, compare and plot by (default: the runs' optimized_metric)" in text
    assert "--baseline KEY=VALUE,... compare every configuration with the one these" in text
    assert "--no-plot do not write summary.png" in text


def test_a_csv_that_cannot_be_parsed_is_one_line(tmp_path, capsys):
    """An empty summary.csv (a copy cut short): exit 2 and one line naming it, no
    traceback. Bug: pandas' EmptyDataError escaped the command."""
    (tmp_path / "summary.csv").write_text("")
    assert main([str(tmp_path / "summary.csv"), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'summary.csv'} cannot be read as a summary.csv")
    assert err.count("\n") == 1
