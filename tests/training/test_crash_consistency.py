"""One durable commit per epoch, checked by fault injection (in the spirit of ALICE and
CrashMonkey): a real run is killed with SIGKILL at its k-th file-system write, then the same
command runs again; it must end with exactly one metrics row per epoch, equal to an
uninterrupted run's, and the same final weights.

``killat.c`` (compiled here, loaded with LD_PRELOAD) counts every open-for-write, rename,
unlink and fsync under the run folder, from Python and from TensorFlow's C++ writers alike,
and kills the process before the k-th. This 3-epoch run has 184 such points (the count is
taken from the uninterrupted run's trace). The default suite kills at three of them: just
before epoch 2's commit (the rename of checkpoints/checkpoint), just after it (before
metrics.csv is replaced: the point where a row used to be lost) and one seeded at random,
the three at once (each run is one thread: ``trainer.threads=1``, a key that does not change
the run); ``make test-slow`` kills at every k.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, TINY, read_rows, read_summary

pytestmark = pytest.mark.e2e

EPOCHS = 3
RUN = [
    *TINY,
    f"trainer.epochs={EPOCHS}",
    "trainer.steps_per_epoch=3",
    "trainer.deterministic=true",
    "trainer.mixed_precision=off",
    # One TensorFlow thread a run: several kill-and-rerun pairs share the cores at once.
    "trainer.threads=1",
]
# Columns a rerun must give back exactly (timings cannot).
REPRODUCIBLE = [
    "epoch",
    "step",
    "loss",
    "fraction_positive",
    "embedding_norm",
    "embedding_spread",
    "learning_rate",
    "precision_at_1",
    "map_at_r",
    "knn_accuracy",
    "eval_queries",
]
SEED = 25
COMMIT = "checkpoints/checkpoint"


@pytest.fixture(scope="module")
def killat(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not sys.platform.startswith("linux"):
        pytest.skip("the fault injector needs a C compiler and Linux (LD_PRELOAD)")
    out = tmp_path_factory.mktemp("killat") / "killat.so"
    source = Path(__file__).with_name("killat.c")
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(source), "-ldl"], check=True
    )
    return out


def run(run_dir: Path, killat: Path, kill_at: int = 0, trace: Path | None = None):
    env = {
        **os.environ,
        "LD_PRELOAD": str(killat),
        "TRIPLETLAB_TEST_KILL_DIR": str(run_dir),
        "TRIPLETLAB_TEST_KILL_AT": str(kill_at),
    }
    if trace is not None:
        env["TRIPLETLAB_TEST_TRACE"] = str(trace)
    return subprocess.run(
        [sys.executable, "run.py", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@dataclass
class Reference:
    run_dir: Path
    ops: list[tuple[str, str]]  # (call, path relative to the run folder), in order

    def commit(self, epoch: int) -> int:
        """k of epoch ``epoch``'s commit: the first rename onto checkpoints/checkpoint after
        ckpt-<epoch>.index is written."""
        written = self.ops.index(("fopen", f"checkpoints/ckpt-{epoch}.index"))
        return 1 + self.ops.index(("rename", COMMIT), written)

    def metrics_replaced(self, epoch: int) -> int:
        """k of the first metrics.csv rename after epoch ``epoch``'s commit."""
        return 1 + self.ops.index(("rename", "metrics.csv"), self.commit(epoch))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, killat) -> Reference:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    trace = run_dir.parent / "trace.txt"
    proc = run(run_dir, killat, trace=trace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops = []
    for line in trace.read_text().splitlines():
        _, call, path = line.split(" ", 2)
        ops.append((call, os.path.relpath(path, run_dir) if path != str(run_dir) else "."))
    assert [int(r["epoch"]) for r in read_rows(run_dir)] == [1, 2, 3]
    return Reference(run_dir, ops)


def checkpoint_tensors(run_dir: Path) -> dict[str, np.ndarray]:
    """Every value of the final checkpoint (weights, Adam's moments, the epoch) but the
    metrics rows, whose timings differ between runs."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / f"ckpt-{EPOCHS}"))
    names = [
        n
        for n in reader.get_variable_to_shape_map()
        if n != "_CHECKPOINTABLE_OBJECT_GRAPH" and not n.startswith("rows/")
    ]
    return {n: reader.get_tensor(n) for n in names}


def kill_then_rerun(reference: Reference, killat: Path, k: int, base: Path) -> str | None:
    """Kill a fresh run at its k-th write, rerun the same command; None when the folder
    ends as the uninterrupted one, else what differs."""
    run_dir = base / f"k{k:04d}"
    killed = run(run_dir, killat, kill_at=k)
    if killed.returncode != -signal.SIGKILL:
        return f"k={k}: the run was not killed (exit {killed.returncode}): {killed.stderr[-500:]}"
    rerun = run(run_dir, killat)
    if rerun.returncode != 0:
        return f"k={k} {reference.ops[k - 1]}: the rerun failed: {rerun.stderr[-1500:]}"
    want, got = read_rows(reference.run_dir), read_rows(run_dir)
    epochs = [r["epoch"] for r in got]
    if epochs != [str(e) for e in range(1, EPOCHS + 1)]:
        return f"k={k} {reference.ops[k - 1]}: metrics.csv has the epochs {epochs}"
    for g, w in zip(got, want, strict=True):
        for key in REPRODUCIBLE:
            if w[key] != g[key] and not np.isclose(float(g[key]), float(w[key]), rtol=1e-6):
                return (
                    f"k={k} {reference.ops[k - 1]}: epoch {w['epoch']} {key} {g[key]} != {w[key]}"
                )
    a, b = checkpoint_tensors(reference.run_dir), checkpoint_tensors(run_dir)
    if sorted(a) != sorted(b):
        return f"k={k}: the final checkpoints hold other variables"
    for name in a:
        if not np.allclose(a[name], b[name], rtol=1e-5, atol=1e-6):
            return f"k={k} {reference.ops[k - 1]}: final weights differ in {name}"
    summary = read_summary(run_dir)
    if summary["status"] != "ok" or summary["epochs_done"] != EPOCHS:
        return f"k={k}: summary says {summary['status']} after {summary['epochs_done']} epochs"
    if (run_dir / ".lock").exists() or not (run_dir / "model" / "embedding_model.keras").is_file():
        return f"k={k}: the lock is left, or the model is missing"
    shutil.rmtree(run_dir)
    return None


def sample(reference: Reference) -> dict[str, int]:
    n = len(reference.ops)
    return {
        "before epoch 2's commit": reference.commit(2),
        "after epoch 2's commit, before its metrics row": reference.metrics_replaced(2),
        "seeded": random.Random(SEED).randint(1, n),
    }


POINTS = ["before epoch 2's commit", "after epoch 2's commit, before its metrics row", "seeded"]


@pytest.fixture(scope="module")
def sampled_kills(reference, killat, tmp_path_factory) -> dict[int, str | None]:
    """kill_then_rerun at each sampled k (once each, should two coincide), all at once:
    each pair of runs is mostly one busy thread (Python, tracing), so they overlap."""
    base = tmp_path_factory.mktemp("sampled")
    ks = sorted(set(sample(reference).values()))
    with ThreadPoolExecutor(max_workers=len(ks)) as pool:
        results = list(pool.map(lambda k: kill_then_rerun(reference, killat, k, base), ks))
    return dict(zip(ks, results, strict=True))


@pytest.mark.parametrize("name", POINTS)
def test_a_kill_at_a_write_loses_and_duplicates_no_row(reference, sampled_kills, name):
    k = sample(reference)[name]
    assert 1 <= k <= len(reference.ops), name
    assert sampled_kills[k] is None, name


def test_the_trace_sees_the_commits_of_python_and_tensorflow(reference):
    """The injector sees TensorFlow's C++ checkpoint writes and Python's atomic writes."""
    calls = set(reference.ops)
    for epoch in range(1, EPOCHS + 1):
        assert reference.commit(epoch) < reference.metrics_replaced(epoch)
    assert ("rename", "metrics.csv") in calls and ("rename", "summary.json") in calls
    assert ("fopen", f"checkpoints/ckpt-{EPOCHS}.index") in calls
    assert any(call == "fsync" for call, _ in reference.ops)


@pytest.mark.slow
def test_a_kill_at_every_write_loses_and_duplicates_no_row(reference, killat, tmp_path):
    """Every k of the uninterrupted run's trace (184), half as many at once as there are
    cores: about an hour on 2 cores, minutes on 16."""
    points = range(1, len(reference.ops) + 1)
    with ThreadPoolExecutor(max_workers=max((os.cpu_count() or 2) // 2, 1)) as pool:
        failures = [
            f
            for f in pool.map(lambda k: kill_then_rerun(reference, killat, k, tmp_path), points)
            if f
        ]
    assert not failures, "\n".join(failures)
