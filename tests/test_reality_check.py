"""scripts/reality_check.sh on a microscopic budget: 2 strategies, 1 trial each on the
validation classes of digits, 2 seeds each on the test classes, one summary; a rerun
trains nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT

# Digits, tiny: 5 steps of one epoch; P x K stays the preset's 3 x 21.
TINY_RUN = (
    "dataset=digits model.embedding_size=8 model.num_channels=4 trainer.epochs=1 "
    "trainer.steps_per_epoch=5 eval.every=1 eval.max_points=100 trainer.progress=log"
)


def _script(out):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "RC_TRIALS": "1",
        "RC_SEEDS": "1,2",
        "RC_MEMORY": "0",
        "RC_STRATEGIES": "batch_hard easy_positive",
        "RC_OVERRIDES": TINY_RUN,
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "reality_check.sh"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def _summaries(folder):
    return {p: json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))}


@pytest.mark.e2e
@pytest.mark.slow
def test_reality_check_tunes_on_validation_classes_then_compares_on_test_classes(tmp_path):
    out = tmp_path / "rc"
    proc = _script(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for cell, own in (("batch_hard-0", set()), ("easy_positive-0", {"mining.negatives"})):
        results = yaml.safe_load((out / "tune" / cell / "optimization_results.yaml").read_text())
        # The search space: learning rate, margin and the strategy's own keys.
        assert set(results["best_params"]) == {"trainer.learning_rate", "mining.margin", *own}
        (trial,) = _summaries(out / "tune" / cell).values()
        # Tuning trained on 3 of digits' 5 training classes and evaluated on the other 2.
        assert trial["config"]["dataset"]["val_classes"] == 2
        finals = list(_summaries(out / "final" / cell).values())
        assert sorted(s["config"]["seed"] for s in finals) == [1, 2]
        for final in finals:
            assert final["status"] == "ok"
            assert final["config"]["dataset"]["val_classes"] is None  # the test classes
            for key, value in results["best_params"].items():  # the tuned config, rounded
                group, name = key.split(".")
                got = final["config"][group][name]
                if isinstance(value, float):
                    assert got == pytest.approx(float(f"{value:.3g}")), key
                else:
                    assert got == value, key
    # One table of the final runs, with the statistics: both cells ran seeds 1 and 2.
    md = (out / "summary" / "summary.md").read_text()
    assert "4 runs, 2 configurations" in md
    assert "95% CI (t)" in md and "| paired " in md
    assert (out / "summary" / "summary_stats.csv").is_file()

    # Resumable: a rerun keeps every trial and run, and trains nothing.
    before = {p: p.stat().st_mtime_ns for p in _summaries(out)}
    again = _script(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== tuning" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in _summaries(out)} == before
