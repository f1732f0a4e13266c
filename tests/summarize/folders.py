"""Run folders written by hand for the summarize tests: summary.json and Hydra's files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from tripletlab.summarize import collect_rows

CONFIG = {
    "dataset": {"name": "digits"},
    "model": {"name": "lenet"},
    "mining": {"strategy": "batch_hard", "margin": 0.2},
    "sampler": {"name": "pk", "classes_per_batch": 4, "images_per_class": 8},
    "trainer": {"epochs": 3, "batch_size": 64, "mixed_precision": "off"},
    "seed": 1,
}


def write_run(
    folder: Path,
    *,
    config: dict | None = CONFIG,
    job: int | None = None,
    overrides: list[str] | None = None,
    saved_config: dict | None = None,
    **summary,
) -> Path:
    """A run folder: summary.json (``summary`` over a finished run's), and .hydra/ files
    as Hydra writes them (hydra.yaml with the job number for a sweep's job)."""
    folder.mkdir(parents=True)
    body = {
        "status": "ok",
        "error": None,
        "metrics": {"precision_at_1": 0.8},
        "best": {"metric": "precision_at_1", "value": 0.8, "epoch": 3},
        "epochs_done": 3,
        "precision": "float32",
        "config": config,
        **summary,
    }
    body = {k: v for k, v in body.items() if v is not ...}
    (folder / "summary.json").write_text(json.dumps(body))
    hydra = folder / ".hydra"
    hydra.mkdir()
    if overrides is not None:
        (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if job is not None:
        mode = {"mode": "RUN_MODE.MULTIRUN", "job": {"num": job}}
        (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": mode}))
    if saved_config is not None:
        (hydra / "config.yaml").write_text(yaml.safe_dump(saved_config))
    return folder


def _config(margin: float, seed: int, strategy: str = "batch_hard", **trainer) -> dict:
    return {
        **CONFIG,
        "seed": seed,
        "mining": {"strategy": strategy, "margin": margin},
        "trainer": {**CONFIG["trainer"], **trainer},
    }


def write_spec(root: Path, spec: dict) -> pd.DataFrame:
    """Runs under ``root`` from spec: {folder: (strategy, margin, seed, precision@1,
    overrides)}, MAP@R half the precision@1, 10 s and 100 img/s times the seed; their rows
    (collect_rows)."""
    for name, (strategy, margin, seed, p1, overrides) in spec.items():
        write_run(
            root / name,
            config=_config(margin, seed, strategy, threads=seed),  # threads: not a setting
            overrides=overrides,
            metrics={"precision_at_1": p1, "map_at_r": p1 / 2},
            train_seconds=10.0 * seed,
            images_per_second=100.0 * seed,
        )
    return collect_rows([root])


SPEC = {
    "h2_s1": ("batch_hard", 0.2, 1, 0.80, ["mining=batch_hard", "seed=1"]),
    "h2_s2": ("batch_hard", 0.2, 2, 0.84, ["mining=batch_hard", "seed=2"]),
    "h2_s3": ("batch_hard", 0.2, 3, 0.82, ["mining=batch_hard", "seed=3"]),
    "h3_s1": ("batch_hard", 0.3, 1, 0.90, ["mining=batch_hard", "mining.margin=0.3", "seed=1"]),
    "h3_s2": ("batch_hard", 0.3, 2, 0.91, ["mining=batch_hard", "mining.margin=0.3", "seed=2"]),
    "h3_s3": ("batch_hard", 0.3, 3, 0.95, ["mining=batch_hard", "mining.margin=0.3", "seed=3"]),
    "s2_s4": ("semi_hard", 0.2, 4, 0.70, ["mining=semi_hard", "seed=4"]),
    "s2_s5": ("semi_hard", 0.2, 5, 0.74, ["mining=semi_hard", "seed=5"]),
}
