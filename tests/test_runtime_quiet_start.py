"""A run's first lines are ours: TensorFlow's start-up notices only with TRIPLETLAB_TF_LOGS=1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, tiny

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e

TF_NOISE = ("absl::InitializeLog", "cpu_feature_guard", "oneDNN custom operations", "I0000")


def _env(**extra: str) -> dict[str, str]:
    # The test process sets TF_CPP_MIN_LOG_LEVEL itself (conftest): not for these runs.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    env.pop("TRIPLETLAB_TF_LOGS", None)
    return {**env, **extra}


def _level(**extra: str) -> str:
    code = "import os, tripletlab; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(**extra), capture_output=True, text=True
    )
    return proc.stdout.strip()


def test_tensorflow_logs_are_off_unless_asked_for():
    assert _level() == "2"
    assert _level(TRIPLETLAB_TF_LOGS="1") == "None"  # TensorFlow's own default: all of it
    assert _level(TF_CPP_MIN_LOG_LEVEL="0") == "0"  # the user's own setting is kept


def test_a_run_prints_no_tensorflow_notice(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "run.py",
            *tiny("lenet"),
            "dataset.max_train=64",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert not [n for n in TF_NOISE if n in output], output[:2000]
    first = output.splitlines()[0]
    assert "tripletlab" in first or "HYDRA" in first, first
