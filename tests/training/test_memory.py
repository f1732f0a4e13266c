"""Cross-batch memory and the sampled strategies in training: the memory is in the
checkpoint (a resumed run equals an uninterrupted one), a sweep over the new strategies and
memory on/off runs on digits, and the config refuses what cannot work."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

import tripletlab
from tests.helpers import ROOT, TINY, read_rows, simulate_kill
from tripletlab.errors import ConfigError

# Deterministic, with the memory used from step 5 of 12 per epoch: epoch 3 of a resumed run
# mines the memory epoch 2 left (restored), and draws the negatives of the same steps.
RESUMED = [
    *TINY,
    "mining=distance_weighted",
    "mining.memory_size=40",
    "mining.memory_start=5",
    "trainer.epochs=3",
    "trainer.steps_per_epoch=12",
    "trainer.checkpoint_every=1",
    "trainer.deterministic=true",
    "trainer.mixed_precision=off",
    "eval.every=3",
]


def _checkpoint(path):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(path))
    return {
        n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map() if "OBJECT" not in n
    }


@pytest.mark.slow  # ~45 s: two 3-epoch runs
def test_a_resumed_run_mines_the_memory_an_uninterrupted_one_would(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    tripletlab.train(tripletlab.compose(RESUMED), reference)
    saved = _checkpoint(reference / "checkpoints" / "ckpt-2")
    memory = {n: v for n, v in saved.items() if n.startswith("memory/")}
    assert {n.split("/")[1] for n in memory} == {"embeddings", "labels", "filled", "next"}
    assert int(memory["memory/filled/.ATTRIBUTES/VARIABLE_VALUE"]) == 40  # full after 24 steps
    simulate_kill(reference, killed, rows_kept=2, checkpoints_kept=[1, 2])

    tripletlab.train(tripletlab.compose(RESUMED), killed)

    want, got = read_rows(reference), read_rows(killed)
    assert float(got[2]["loss"]) == pytest.approx(float(want[2]["loss"]), rel=1e-6)
    ours, theirs = (_checkpoint(p / "checkpoints" / "ckpt-3") for p in (killed, reference))
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow  # ~25 s
def test_the_memory_changes_training(tmp_path):
    """Control for the test above: an empty memory (as a resume that lost it would mine)
    gives other weights, so the comparison there can fail."""
    with_memory = [o for o in RESUMED if not o.startswith("trainer.epochs")] + ["trainer.epochs=1"]
    without = [*with_memory, "mining.memory_size=0"]
    for name, overrides in (("on", with_memory), ("off", without)):
        tripletlab.train(tripletlab.compose(overrides), tmp_path / name)
    on, off = (_checkpoint(tmp_path / n / "checkpoints" / "ckpt-1") for n in ("on", "off"))
    kernels = [n for n in on if n.startswith("model/") and n in off]
    assert any(not np.allclose(on[n], off[n]) for n in kernels)


def test_config_refuses_what_cannot_work():
    with pytest.raises(ConfigError, match="needs L2-normalised embeddings"):
        tripletlab.compose([*TINY, "mining=distance_weighted", "model.l2_normalize=false"])
    with pytest.raises(ConfigError, match="mining.squared=false"):
        tripletlab.compose([*TINY, "mining=distance_weighted", "mining.squared=true"])
    with pytest.raises(ConfigError, match="mining.memory_size=-1 is not valid"):
        tripletlab.compose([*TINY, "mining.memory_size=-1"])
    with pytest.raises(ConfigError, match="mining.negatives"):
        tripletlab.compose([*TINY, "mining=semi_hard", "+mining.negatives=hard"])
    with pytest.raises(ConfigError, match="mining.negatives='easy' is not valid"):
        tripletlab.compose([*TINY, "mining=easy_positive", "mining.negatives=easy"])


def test_sweep_over_the_new_strategies_and_memory(tmp_path):
    """mining=easy_positive,distance_weighted x mining.memory_size=0,1024 on digits: every
    job finishes, and the new keys are config columns (HParams take the flattened config)."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHON": sys.executable, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            *TINY,
            "dataset.max_train=256",
            "mining=easy_positive,distance_weighted",
            "mining.memory_size=0,1024",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    seen = set()
    for row in rows:
        assert row["status"] in ("ok", "collapsed") and row["error"] == "", row
        summary = (sweep / row["run_dir"] / "summary.json").read_text()
        import json

        config = json.loads(summary)["config"]
        seen.add((config["mining"]["strategy"], config["mining"]["memory_size"]))
        from tripletlab.tracking.tensorboard import hparam_values

        assert "mining.memory_size" in hparam_values(config)
    assert seen == {(s, m) for s in ("easy_positive", "distance_weighted") for m in (0, 1024)}
