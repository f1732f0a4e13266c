"""The Python API: tripletlab.compose and tripletlab.train, as a notebook uses them."""

from __future__ import annotations

import json
import math

import pytest

import tripletlab
from tripletlab.errors import ConfigError

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e

TINY = [
    "dataset=digits",
    "sampler.classes_per_batch=4",
    "sampler.images_per_class=4",
    "model.embedding_size=8",
    "trainer.epochs=1",
    "trainer.warmup_epochs=0",
    "eval.max_points=50",
    "trainer.progress=log",
]


def test_compose_gives_the_default_run():
    cfg = tripletlab.compose()
    assert (cfg.dataset.name, cfg.model.name, cfg.mining.strategy) == (
        "fashion_mnist",
        "small_cnn",
        "semi_hard",
    )
    assert "hydra" not in cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.epochs=abc"], "trainer.epochs=abc: Value 'abc' .* converted to Integer"),
        (["trainer.epoch=3"], "trainer.epoch"),
        (["mining=bogus"], "bogus"),
        (["trainer.schedule=linear"], "constant, cosine"),
    ],
)
def test_compose_mistakes_are_config_errors_with_one_readable_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        tripletlab.compose(overrides)
    assert "\n" not in str(info.value)
    assert "Config search path" not in str(info.value)


def test_train_writes_a_run_folder_the_reuse_commands_accept(tmp_path):
    from tripletlab.reuse import load_config

    cfg = tripletlab.compose(TINY)
    value = tripletlab.train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert value == pytest.approx(summary["metrics"]["precision_at_1"])
    assert math.isfinite(value)
    reloaded = load_config(tmp_path / "run").cfg
    assert reloaded.dataset.name == "digits" and reloaded.model.embedding_size == 8
