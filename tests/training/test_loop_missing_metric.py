"""A run whose test split leaves no query scorable reports its retrieval metrics as missing."""

from __future__ import annotations

import csv
import logging

import tripletlab
from tests.helpers import compose, tiny
from tripletlab.run_folder import RunFolder


def test_max_test_1_reports_precision_as_missing_not_zero(tmp_path, caplog):
    cfg = compose([*tiny("lenet"), "dataset.max_train=64", "dataset.max_test=1"])
    with caplog.at_level(logging.WARNING, logger="tripletlab"):
        value = tripletlab.train(cfg, tmp_path)
    assert value != value  # NaN: the optimised metric is missing
    folder = RunFolder(tmp_path)
    summary = folder.read_summary()
    assert summary["status"] == "ok"
    for key in ("precision_at_1", "recall_at_4", "map_at_r"):
        assert summary["metrics"][key] is None, key
    assert summary["best"]["value"] is None
    with folder.metrics_path.open(newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["precision_at_1"] in ("", "nan")  # never 0.0
    assert "retrieval metrics are missing" in caplog.text
