"""The package's layering: one owner for the run folder's format, reuse without training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tripletlab"


@pytest.mark.parametrize("name", ["summary.json", "metrics.csv"])
def test_run_folder_file_names_live_in_one_module(name):
    owners = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if name in p.read_text()
    )
    assert owners == ["run_folder.py"]


@pytest.mark.parametrize(
    "module",
    [
        "tripletlab.reuse.evaluate",
        "tripletlab.reuse.visualize",
        "tripletlab.reuse.embed",
        "tripletlab.sweep",
        "tripletlab.summarize",
        "tripletlab.reuse",
        "tripletlab.inference",
    ],
)
def test_reuse_sweeps_and_summaries_do_not_import_the_training_loop(module):
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.startswith('tripletlab.training')); "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == ""
