"""``python -m tripletlab.bench distribute``: one device beside N replicas, in one run."""

from __future__ import annotations

import csv
import subprocess
import sys

from tests.helpers import ROOT


def test_bench_prints_one_device_beside_the_replicas(tmp_path):
    out = tmp_path / "distribute.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "tripletlab.bench", "distribute", "--models", "lenet",
         "--steps", "2", "--warmup", "1", "--max-images", "512", "--cpu-devices", "2",
         "--csv", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| lenet |" in proc.stdout and "2 replicas img/s" in proc.stdout
    with out.open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["replicas"] == "2"
    one, many = float(row["one_device_images_per_second"]), float(row["replicas_images_per_second"])
    assert one > 0 and many > 0
    assert float(row["speedup"]) == round(many / one, 2)
    assert float(row["replicas_per_replica_bn_images_per_second"]) > 0
