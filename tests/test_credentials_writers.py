"""A credential that slips past the gate is masked by every writer: one run and one sweep.

The gate is switched off in the subprocess (``refuse_secrets`` made a no-op before anything
imports it), as if it had missed one. A sentinel secret then enters the config on the command
line and through ``${oc.env:...}``, in several encodings; the run and the sweep report to
MLflow (a sqlite store under the working folder). Every file of the run, the sweep and the
MLflow store, every file name, stdout and stderr are searched for the sentinel in every
encoding, and the warnings must name the writers it reached.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from tests.helpers import ROOT, TINY
from tests.test_credentials import CORE, encodings_of

pytestmark = pytest.mark.e2e

VALUE = f"{CORE}+/Ab=="  # base64-looking: "+", "/" and "=" need encoding
ONCE = quote(VALUE, safe="")


def secret_uri(host: str) -> str:
    """The sentinel in the userinfo (percent), a query (plus), an X-Amz-Signature (double
    percent) and a fragment (plain)."""
    return (
        f"https://u:{ONCE}@{host}/p?a=1&token={quote_plus(VALUE, safe='')}"
        f"&X-Amz-Signature={quote(ONCE, safe='')}#access_token={CORE}"
    )


# Two commands in one process (one TensorFlow import): the arguments of each, split at "--".
GATE_MISSES = (
    "import sys\n"
    "import tripletlab.credentials as c\n"
    "from tripletlab.credentials import gate\n"
    "# The gate misses (in refuse_config and in every command); the writers must not.\n"
    "c.refuse_secrets = gate.refuse_secrets = lambda values: None\n"
    "from tripletlab.cli.train import main\n"
    "at = sys.argv.index('--')\n"
    "sys.exit(main(sys.argv[1:at]) or main(sys.argv[at + 1 :]))\n"
)


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "SENTINEL_URI": secret_uri("env.example"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-c", GATE_MISSES, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def _quoted(text: str) -> str:
    return "'" + text + "'"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run (the sentinel on the command line), then one sweep of two jobs (on the
    command line, and from the environment), both with logger=mlflow, in one working
    folder and one process."""
    where = tmp_path_factory.mktemp("leaky")
    proc = _train(
        [
            *TINY,
            "logger=mlflow",
            f"logger.experiment={_quoted(secret_uri('cli.example'))}",
            f"hydra.run.dir={where / 'run'}",
            "--",
            "-m",
            *TINY,
            "logger=mlflow",
            f"logger.experiment={_quoted(secret_uri('sweep.example'))},"
            + _quoted("${oc.env:SENTINEL_URI}"),
            f"hydra.sweep.dir={where / 'sweep'}",
        ],
        where,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (where / "run" / "summary.json").is_file()
    return where, proc


def _leaks(data: bytes) -> list[str]:
    return [form for form in encodings_of(CORE) + encodings_of(VALUE) if form.encode() in data]


def test_no_file_name_or_content_holds_the_secret_in_any_encoding(runs):
    where, _ = runs
    files = [p for p in where.rglob("*") if p.is_file()]
    assert len(files) > 50  # the run, the sweep's jobs and the MLflow store
    assert (where / "outputs" / "mlflow.db").is_file()
    found = {str(p.relative_to(where)): _leaks(p.read_bytes()) for p in files}
    assert {name: forms for name, forms in found.items() if forms} == {}
    assert [p for p in where.rglob("*") if _leaks(str(p).encode())] == []


def test_stdout_and_stderr_hold_no_secret(runs):
    _, proc = runs
    assert _leaks((proc.stdout + proc.stderr).encode()) == []


def test_the_writers_got_the_value_masked_and_said_where(runs):
    """The sentinel did reach the writers (masked, not dropped), and warnings name them."""
    where, proc = runs
    jobs = sorted(p.parent for p in (where / "sweep").glob("*/summary.json"))
    assert len(jobs) == 2
    for folder in (where / "run", *jobs):
        summary = (folder / "summary.json").read_text()
        assert "https://u:***@" in summary and "token=***" in summary, summary[:2000]
    assert "https://u:***@cli.example" in (where / "run" / ".hydra" / "config.yaml").read_text()
    assert "***" in (where / "sweep" / "multirun.yaml").read_text()
    with sqlite3.connect(where / "outputs" / "mlflow.db") as db:
        names = [row[0] for row in db.execute("select name from experiments")]
        params = [
            row[0] for row in db.execute("select value from params where key like 'logger.%'")
        ]
    assert sum("***" in name for name in names) == 3, names  # the run and two jobs
    assert any("https://u:***@" in value for value in params), params
    said = proc.stdout + proc.stderr
    reached = [line for line in said.splitlines() if "a credential reached" in line]
    for writer in (
        *("/run/summary.json", "/run/.hydra/config.yaml", "/run/.hydra/overrides.yaml"),
        *("the TensorBoard tracker", "the mlflow tracker", "MLflow's experiment name"),
        *("multirun.yaml", "a sweep job's folder name"),
    ):
        assert any(writer in line for line in reached), (writer, reached)
