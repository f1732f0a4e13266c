"""Shared fixtures: compose the real ``conf/`` with Hydra's compose API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# Overrides that shrink any run to seconds on digits.
TINY = [
    "dataset=digits",
    "sampler=pk",
    "sampler.classes_per_batch=4",
    "sampler.images_per_class=4",
    "model.embedding_size=8",
    "model.num_channels=4",
    "trainer.epochs=1",
    "trainer.warmup_epochs=0",
    "eval.max_points=100",
    "trainer.progress=log",
]


def tiny(model: str | None = None, sampler: str = "pk") -> list[str]:
    """TINY for another model (a name, or several for a sweep: "lenet,small_cnn") or
    sampler, without the keys those options lack: only small_cnn and vgg_gap have
    model.num_channels, only pk has sampler.classes_per_batch / images_per_class."""
    out = [o for o in TINY if not o.startswith(("sampler", "model.num_channels"))]
    if model is None or model in ("small_cnn", "vgg_gap"):
        out.append("model.num_channels=4")
    if model is not None:
        out.append(f"model={model}")
    if sampler == "pk":
        return [*out, "sampler=pk", "sampler.classes_per_batch=4", "sampler.images_per_class=4"]
    return [*out, f"sampler={sampler}"]


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tripletlab.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(
            config_name="config",
            overrides=list(overrides or []),
            return_hydra_config=return_hydra_config,
        )


@pytest.fixture
def compose_cfg():
    return compose


@pytest.fixture
def tiny_overrides():
    return list(TINY)
