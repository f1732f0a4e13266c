"""The real conf/ composes for every combination; bad values fail early and clearly."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from tests.conftest import ROOT, compose
from tripletlab.config import validate
from tripletlab.errors import ConfigError

DATASETS = ["fashion_mnist", "mnist", "digits", "image_folder"]
MODELS = ["lenet", "small_cnn", "vgg_gap"]
MININGS = ["batch_all", "batch_hard", "semi_hard"]
SAMPLERS = ["random", "pk"]


def test_default_config_is_the_documented_default():
    cfg = compose()
    assert cfg.dataset.name == "fashion_mnist"
    assert cfg.model.name == "small_cnn"
    assert cfg.mining.strategy == "semi_hard"
    assert cfg.optimized_metric == "precision_at_1"
    validate(cfg)


@pytest.mark.parametrize(
    ("dataset", "model", "mining", "sampler"),
    list(itertools.product(DATASETS, MODELS, MININGS, SAMPLERS)),
)
def test_every_combination_composes_and_validates(dataset, model, mining, sampler, tmp_path):
    overrides = [f"dataset={dataset}", f"model={model}", f"mining={mining}", f"sampler={sampler}"]
    if dataset == "image_folder":
        overrides.append(f"dataset.root={tmp_path}")
    cfg = compose(overrides)
    validate(cfg)
    assert cfg.dataset.name == dataset
    assert cfg.model.name == model
    assert cfg.mining.strategy == mining
    assert cfg.sampler.name == sampler


@pytest.mark.parametrize("preset", ["seed_batch_all", "seed_batch_hard", "seed_semi_hard"])
def test_seed_presets_reproduce_the_seed_params(preset):
    cfg = compose([f"experiment={preset}"])
    validate(cfg)
    assert cfg.mining.strategy == preset.removeprefix("seed_")
    assert cfg.mining.margin == 0.5
    assert cfg.model.embedding_size == 64
    assert not cfg.model.l2_normalize
    assert cfg.sampler.name == "random"
    assert cfg.trainer.batch_size == 64


@pytest.mark.parametrize(
    ("preset", "model"), [("fmnist_table", "small_cnn"), ("fmnist_vgg_gap", "vgg_gap")]
)
def test_table_presets(preset, model):
    cfg = compose([f"experiment={preset}"])
    validate(cfg)
    assert (cfg.dataset.name, cfg.sampler.name, cfg.model.name) == ("fashion_mnist", "pk", model)
    assert (cfg.trainer.epochs, cfg.eval.every, cfg.mining.margin) == (10, 5, 0.2)
    assert compose([f"experiment={preset}", "model=lenet"]).model.name == "lenet"


def test_wrong_type_fails_at_composition():
    with pytest.raises((ValidationError, ConfigCompositionException), match="epochs"):
        compose(["trainer.epochs=abc"])


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="epoch"):
        compose(["trainer.epoch=3"])


def test_unknown_group_option_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="bogus"):
        compose(["mining=bogus"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampler.classes_per_batch=0", "sampler.classes_per_batch"),
        ("sampler.images_per_class=1", "images_per_class"),
        ("mining.strategy=hardest", "batch_all, batch_hard, semi_hard"),
        ("trainer.mixed_precision=float8", "trainer.mixed_precision"),
        ("trainer.jit_compile=maybe", "trainer.jit_compile"),
        ("trainer.learning_rate=-1", "trainer.learning_rate"),
        ("optimized_metric=accuracy", "optimized_metric"),
    ],
)
def test_bad_values_raise_config_error(override, message):
    cfg = compose([override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_bare_off_and_bools_are_accepted():
    validate(compose(["trainer.mixed_precision=false", "trainer.jit_compile=true"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=abc", "trainer.epochs"),
        ("mining=bogus", "bogus"),
        ("sampler.classes_per_batch=0", "sampler.classes_per_batch"),
    ],
)
def test_cli_reports_config_mistakes_without_traceback(override, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), override, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_two_runs_started_together_get_two_folders(tmp_path):
    # Both runs stop at validation, after Hydra made their folders under tmp_path/outputs.
    cmd = [sys.executable, str(ROOT / "run.py"), "sampler.classes_per_batch=0"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        proc.communicate(timeout=120)
    folders = [p for p in (tmp_path / "outputs" / "runs").glob("*/*") if p.is_dir()]
    assert len(folders) == 2
