"""A failed trial of an Optuna search (hparams_search=optuna): one line, and the study goes on
(tripletlab.search). Trials fail for real: a search space whose dataset.max_train=5 leaves
classes with one image, which training refuses."""

from __future__ import annotations

import csv
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, TINY
from tripletlab.search import FailedTrial, TrialFailed, trial_value

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

FAILING = "class(es) ['0', '4', '9'] of scikit-learn have fewer than 2 training images"


def test_a_failed_trial_is_not_float_castable_and_travels():
    """The Optuna sweeper's float() of the value raises the job's one-line error (not
    ValueError/TypeError, which it would wrap); launchers pickle the value."""
    optuna_cfg = yaml.safe_load("sweeper: {_target_: x.OptunaSweeper, n_trials: 5}")
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.create({**optuna_cfg, "sweep": {"dir": "/s"}, "runtime": {"cwd": "/"}})
    value = trial_value(hydra_cfg, math.nan, "bad data")
    assert isinstance(value, FailedTrial)
    with pytest.raises(TrialFailed, match="^bad data$"):
        float(pickle.loads(pickle.dumps(value)))
    assert trial_value(hydra_cfg, 0.5) == 0.5
    assert isinstance(trial_value(hydra_cfg, math.nan), FailedTrial)  # a NaN metric
    basic = OmegaConf.create({"sweeper": {"_target_": "hydra._internal.BasicSweeper"}})
    assert math.isnan(trial_value(basic, math.nan, "bad data"))  # the grid keeps NaN


def _search(tmp_path: Path, max_train: str, n_trials: int) -> subprocess.CompletedProcess:
    """An Optuna search whose space includes dataset.max_train (a config of the test's own,
    on the search path), into a sqlite study."""
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "failing.yaml").write_text(
        "# @package _global_\ndefaults:\n  - optuna\n\nhydra:\n  sweeper:\n    params:\n"
        f"      dataset.max_train: {max_train}\n"
    )
    args = [o for o in TINY if not o.startswith("trainer.epochs")]
    return subprocess.run(
        [
            sys.executable,
            "run.py",
            "hparams_search=failing",
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            *args,
            "trainer.epochs=1",
            f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _lines(proc: subprocess.CompletedProcess, text: str) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if text in line]


@pytest.mark.e2e
def test_a_search_whose_every_trial_fails_ends_with_one_line(tmp_path):
    proc = _search(tmp_path, "choice(5)", 2)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "Values were told" not in output
    # The first trial: the sweeper's one line; the last: the search's end, one line.
    assert len(_lines(proc, "Failed experiment:")) == 1
    assert FAILING in _lines(proc, "Failed experiment:")[0]
    errors = _lines(proc, "error:")
    assert len(errors) == 1 and "all 2 trial(s) of the search failed" in errors[0]
    assert FAILING in errors[0] and "summary.csv" in errors[0]
    with (tmp_path / "sweep" / "summary.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["failed", "failed"]


@pytest.mark.e2e
@pytest.mark.slow  # four trials, two of which train
def test_failed_trials_are_one_line_each_and_the_study_goes_on(tmp_path):
    import optuna

    proc = _search(tmp_path, "choice(5, 256)", 4)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]  # a job failed: as any sweep
    assert "Traceback" not in output and "Values were told" not in output
    with (tmp_path / "sweep" / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 4 and 0 < len(failed) < 4  # the seeded sampler picks both values
    failures = _lines(proc, "Failed experiment:")
    assert len(failures) == len(failed) and all(FAILING in line for line in failures)
    assert _lines(proc, f"{len(failed)} of 4 jobs failed")
    study = optuna.load_study(study_name="tripletlab", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted(["FAIL"] * len(failed) + ["COMPLETE"] * (4 - len(failed)))
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_params"]["dataset.max_train"] == 256
