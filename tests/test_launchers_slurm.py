"""The Slurm launcher's real job path, on this machine: Hydra's submitit launcher with
submitit's local executor (``hydra/launcher=submitit_local``) runs each job as Slurm would,
including the pre-emption signal (USR2) that makes submitit requeue a job."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, tiny

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # each sweep starts fresh Python processes per job


def _sweep(args, sweep_dir):
    return subprocess.Popen(
        [sys.executable, "run.py", "-m", "hydra/launcher=submitit_local", *args,
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def test_a_two_job_sweep_through_submitit(tmp_path):
    proc = _sweep([*tiny("lenet"), "mining=batch_all,semi_hard"], tmp_path)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["mining"] for r in rows) == ["batch_all", "semi_hard"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert len(list((tmp_path / ".submitit").iterdir())) >= 1  # submitit ran the jobs


def _job_processes(sweep_dir: Path) -> list[int]:
    """PIDs of submitit's job processes (python -m submitit.core._submit FOLDER)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "submitit.core._submit" in cmdline and str(sweep_dir) in cmdline:
            pids.append(int(proc.name))
    return pids


def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    epochs = 40
    args = [*tiny("lenet"), f"trainer.epochs={epochs}", "eval.every=100", "mining=semi_hard"]
    proc = _sweep(args, tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = list(tmp_path.glob("*/metrics.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            break  # two epochs are checkpointed
        time.sleep(0.2)
    (metrics,) = tmp_path.glob("*/metrics.csv")
    pids = _job_processes(tmp_path)
    assert pids, "no submitit job process found"
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)  # what Slurm sends before a time limit or pre-emption
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    run_dir = metrics.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_done"] == epochs
    with metrics.open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, epochs + 1))
    assert "resuming from" in (run_dir / "run.log").read_text()
    # submitit caught the signal, and the job ran again: the run log shows the resume above.
    submitit_logs = "".join(p.read_text() for p in (tmp_path / ".submitit").rglob("*.err"))
    assert "Caught signal SIGUSR2" in submitit_logs
