"""``--resume DIR`` shows the endpoints it replays from a sweep folder, and sends none of the
environment's credentials to one that the command does not name (``--trust-endpoints``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tripletlab.cli import sweep as sweep_cli

SENTINEL = "s3ntinel-PW"


def _sweep_folder(tmp_path: Path, task: list[str], hydra: list[str] = ()) -> Path:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    saved = {
        "hydra": {
            "callbacks": {"g": {"_target_": "tripletlab.credentials.SecretGate"}},
            "overrides": {"hydra": ["hydra.mode=MULTIRUN", *hydra], "task": task},
        }
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(saved))
    return sweep


ENDPOINT_CASES = {
    "tracking URI": (
        ["logger=mlflow", "logger.tracking_uri=https://mlflow.evil.example"],
        [],
        "MLFLOW_TRACKING_PASSWORD",
    ),
    "sweep of URIs": (
        ["logger=mlflow", "logger.tracking_uri=sqlite:///x.db,http://evil.example:5000"],
        [],
        "MLFLOW_TRACKING_TOKEN",
    ),
    "Optuna storage": (
        ["hparams_search=optuna"],
        ["hydra.sweeper.storage=postgresql://optuna@db.evil.example/s"],
        "PGPASSWORD",
    ),
}


@pytest.mark.parametrize("case", ENDPOINT_CASES)
def test_resume_refuses_to_send_credentials_to_a_replayed_endpoint(
    case, tmp_path, capsys, monkeypatch
):
    task, hydra, variable = ENDPOINT_CASES[case]
    sweep = _sweep_folder(tmp_path, task, hydra)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in (
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "PGPASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    # No credential in the environment: the endpoints are shown, and the resume goes on.
    assert sweep_cli.main(["--dry-run", "--resume", str(sweep)]) == 0
    out, err = capsys.readouterr()
    assert err.startswith(f"replayed from {sweep / 'multirun.yaml'}: ") and "evil.example" in err
    monkeypatch.setenv(variable, SENTINEL)
    assert sweep_cli.main(["--dry-run", "--resume", str(sweep)]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: --resume replays"), err
    assert variable in err and "--trust-endpoints" in err and SENTINEL not in err
    # Confirmed, or named by the command itself: it runs.
    assert sweep_cli.main(["--dry-run", "--resume", str(sweep), "--trust-endpoints"]) == 0
    key, _, uri = (task + hydra)[-1].partition("=")
    named = f"{key}={uri.split(',')[-1]}"
    assert sweep_cli.main(["--dry-run", "--resume", str(sweep), named]) == 0
    capsys.readouterr()


def test_a_local_endpoint_receives_nothing(tmp_path, capsys, monkeypatch):
    sweep = _sweep_folder(
        tmp_path, ["hparams_search=optuna"], ["hydra.sweeper.storage=sqlite:///o.db"]
    )
    monkeypatch.setenv("PGPASSWORD", SENTINEL)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SENTINEL)
    assert sweep_cli.main(["--dry-run", "--resume", str(sweep)]) == 0
    assert "hydra.sweeper.storage=sqlite:///o.db" in capsys.readouterr().err
