"""The real conf/ composes for every combination; bad values and keys fail early and clearly."""

from __future__ import annotations

import dataclasses
import itertools
import re
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import tripletlab
from tests.helpers import ROOT, compose
from tripletlab import config
from tripletlab.config import typed, validate
from tripletlab.errors import ConfigError
from tripletlab.options.dataset import DigitsConfig
from tripletlab.registry import schema_for

DATASETS = ["fashion_mnist", "mnist", "digits", "image_folder"]
MODELS = ["lenet", "small_cnn", "vgg_gap"]
MININGS = ["batch_all", "batch_hard", "semi_hard"]
# Mining options with keys of their own (a schema per option), beyond MININGS.
OWN_MINING_KEYS = {
    "easy_positive": {"negatives": "semi_hard"},
    "distance_weighted": {"cutoff": 0.5, "nonzero_loss_cutoff": 1.4},
}
SAMPLERS = ["random", "pk"]
# Options read from image files (dataset.root has no default) and pretrained backbones: each
# composes to its schema's defaults, but they stay out of the every-combination product.
FILE_DATASETS = ["image_folder", "cub200", "cars196", "sop", "inshop"]
PRETRAINED = ["resnet50", "efficientnetv2_b0", "mobilenetv3_small"]
METRICS = (
    "precision_at_1, recall_at_1, recall_at_2, recall_at_4, recall_at_8, map_at_r, knn_accuracy"
)

# The default run, key by key: what `python run.py` composed before the schemas were split
# per option (dataset.test_fraction, which IDX datasets never read, is gone).
DEFAULT = {
    "dataset": {
        "name": "fashion_mnist",
        "image_size": None,
        "channels": None,
        "split_seed": 0,
        "max_train": None,
        "max_test": None,
        "split": "original",
        "train_classes": None,
        "val_classes": None,
        "root": None,
        "download": True,
        "url": None,
        "allow_insecure_url": False,
    },
    "model": {
        "name": "small_cnn",
        "embedding_size": 64,
        "l2_normalize": True,
        "num_channels": 32,
        "batch_norm": True,
    },
    "mining": {
        "strategy": "semi_hard",
        "margin": 0.2,
        "squared": False,
        "soft_margin": False,
        "memory_size": 0,
        "memory_start": 0,
    },
    "sampler": {"name": "pk", "classes_per_batch": 8, "images_per_class": 8},
    "trainer": {
        "epochs": 10,
        "batch_size": 64,
        "learning_rate": 0.001,
        "warmup_epochs": 1.0,
        "schedule": "cosine",
        "weight_decay": 0.0,
        "augment": "none",
        "jit_compile": "auto",
        "mixed_precision": "auto",
        "deterministic": False,
        "progress": "auto",
        "threads": 0,
        "checkpoint_every": 1,
        "steps_per_epoch": None,
        "collapse_patience": 2,
        "resume": "auto",
    },
    "eval": {
        "every": 1,
        "sample_queries": 2000,
        "full_every": 0,
        "batch_size": 1024,
        "knn_k": 10,
        "max_points": 2000,
        "chunk_size": 1024,
    },
    "distribute": {"name": "none", "cpu_devices": 0},
    "logger": {"name": "none"},
    "seed": 42,
    "optimized_metric": "precision_at_1",
}


def _with(base: dict, changes: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        group, _, name = key.partition(".")
        if name:
            out[group][name] = value
        else:
            out[group] = value
    return out


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


# ------------------------------------------------------------------ defaults


def test_default_config_is_the_documented_default():
    cfg = compose()
    assert _plain(cfg) == DEFAULT
    validate(cfg)


def test_the_schema_holds_every_default():
    """The YAML options only pick a schema: each composes to exactly its schema's defaults."""
    for group, options in (
        ("dataset", sorted({*DATASETS, *FILE_DATASETS})),
        ("model", MODELS + PRETRAINED),
        ("sampler", SAMPLERS),
    ):
        for option in options:
            root = {"root": "/x"} if option in FILE_DATASETS else {}
            node = compose([f"{group}={option}", *(f"dataset.root={v}" for v in root.values())])
            schema = schema_for(group, option)
            assert OmegaConf.get_type(node[group]) is schema
            assert _plain(node[group]) == _plain(OmegaConf.structured(schema)) | root
    for mining in MININGS:
        node = _plain(compose([f"mining={mining}"]).mining)
        assert node == DEFAULT["mining"] | {"strategy": mining}
    for mining, own in OWN_MINING_KEYS.items():
        node = compose([f"mining={mining}"]).mining
        assert OmegaConf.get_type(node) is schema_for("mining", mining)
        assert _plain(node) == DEFAULT["mining"] | {"strategy": mining} | own
    assert _plain(OmegaConf.structured(config.TrainerConfig)) == DEFAULT["trainer"]
    assert _plain(OmegaConf.structured(config.EvalConfig)) == DEFAULT["eval"]


def test_no_default_is_written_twice():
    """conf/ picks options and schemas; values live in the schemas (presets aside)."""
    conf = ROOT / "conf"
    assert set(OmegaConf.load(conf / "config.yaml")) == {"defaults", "hydra"}
    for group in ("dataset", "model", "sampler"):
        for path in (conf / group).glob("*.yaml"):
            assert set(OmegaConf.load(path)) == {"defaults"}, path
            assert OmegaConf.load(path).defaults == [f"/schema/{group}/{path.stem}@_here_"]
    for path in (conf / "mining").glob("*.yaml"):
        if path.stem in OWN_MINING_KEYS:
            assert OmegaConf.load(path).defaults == [f"/schema/mining/{path.stem}@_here_"]
        else:
            assert OmegaConf.load(path) == {"strategy": path.stem}, path


@pytest.mark.parametrize(
    ("preset", "changes"),
    [
        ("fmnist_table", {"eval.every": 5}),
        ("fmnist_vgg_gap", {"eval.every": 5, "model.name": "vgg_gap"}),
        (
            "fmnist_best",
            {
                "model.name": "vgg_gap",
                "mining.strategy": "semi_hard",
                "trainer.learning_rate": 0.003,
                "trainer.epochs": 12,
            },
        ),
        (
            "fmnist_unseen",
            {
                "eval.every": 5,
                "dataset.split": "classes",
                "sampler": {"name": "pk", "classes_per_batch": 5, "images_per_class": 13},
            },
        ),
    ],
)
def test_table_presets(preset, changes):
    cfg = compose([f"experiment={preset}"])
    validate(cfg)
    assert _plain(cfg) == _with(DEFAULT, changes)
    assert compose([f"experiment={preset}", "model=lenet"]).model.name == "lenet"


@pytest.mark.parametrize(
    ("preset", "epochs", "learning_rate"),
    [("seed_batch_all", 20, 0.001), ("seed_batch_hard", 5, 0.0001), ("seed_semi_hard", 20, 0.001)],
)
def test_seed_presets_reproduce_the_seed_params(preset, epochs, learning_rate):
    """The seed's params.json, all of it: the trainer values too (config.yaml no longer
    overrides them after the preset)."""
    cfg = compose([f"experiment={preset}"])
    validate(cfg)
    seed = {
        "model.batch_norm": False,
        "model.l2_normalize": False,
        "mining.strategy": preset.removeprefix("seed_"),
        "mining.margin": 0.5,
        "sampler": {"name": "random"},
        "trainer.epochs": epochs,
        "trainer.learning_rate": learning_rate,
        "trainer.warmup_epochs": 0.0,
        "trainer.schedule": "constant",
    }
    assert _plain(cfg) == _with(DEFAULT, seed)


@pytest.mark.parametrize(
    ("dataset", "model", "mining", "sampler"),
    list(itertools.product(DATASETS, MODELS, MININGS, SAMPLERS)),
)
def test_every_combination_composes_and_validates(dataset, model, mining, sampler, tmp_path):
    overrides = [f"dataset={dataset}", f"model={model}", f"mining={mining}", f"sampler={sampler}"]
    if dataset == "image_folder":
        overrides.append(f"dataset.root={tmp_path}")
    cfg = tripletlab.compose(overrides)
    assert cfg.dataset.name == dataset
    assert cfg.model.name == model
    assert cfg.mining.strategy == mining
    assert cfg.sampler.name == sampler


# ------------------------------------------------------------------ keys per option


def test_each_option_has_only_its_keys():
    assert "root" not in compose(["dataset=digits"]).dataset
    assert "test_fraction" not in compose(["dataset=mnist"]).dataset
    assert "download" not in compose(["dataset=image_folder", "dataset.root=/x"]).dataset
    assert {"num_channels", "batch_norm"}.isdisjoint(compose(["model=lenet"]).model)
    assert "classes_per_batch" not in compose(["sampler=random"]).sampler


@pytest.mark.parametrize(
    ("option", "key"),
    [
        ("dataset=digits", "dataset.root=/x"),
        ("dataset=digits", "dataset.download=false"),
        ("dataset=image_folder", "dataset.url=https://example.org/"),
        ("dataset=fashion_mnist", "dataset.test_fraction=0.5"),
        ("model=lenet", "model.num_channels=4"),
        ("model=lenet", "model.batch_norm=false"),
        ("sampler=random", "sampler.classes_per_batch=4"),
        ("sampler=random", "+sampler.images_per_class=4"),  # Hydra's append, past the schema
        ("dataset=digits", "++dataset.root=/x"),
    ],
)
def test_a_key_that_does_not_apply_to_the_option_fails(option, key):
    name = key.lstrip("+").split("=")[0]
    schema = schema_for(*option.split("="))
    valid = ", ".join(f.name for f in dataclasses.fields(schema))
    with pytest.raises(ConfigError) as err:
        tripletlab.compose([option, key])
    assert f"{name} is not a key of {option}; its keys: {valid}" in str(err.value)


def test_a_key_typo_names_the_valid_keys():
    with pytest.raises(
        ConfigError, match="trainer.epoch is not a key of trainer; its keys: epochs"
    ):
        tripletlab.compose(["trainer.epoch=3"])
    with pytest.raises(ConfigError, match="foo is not a key of the config; its keys: dataset"):
        tripletlab.compose(["+foo=1"])


def test_a_name_that_contradicts_the_option_fails():
    with pytest.raises(ConfigError, match=r"model.name='small_cnn' .* model=small_cnn"):
        tripletlab.compose(["model=lenet", "model.name=small_cnn"])


def test_a_required_key_left_unset_fails_at_composition():
    with pytest.raises(ConfigError, match=r"dataset.root must be set: dataset=image_folder"):
        tripletlab.compose(["dataset=image_folder"])


def test_typed_reads_a_config_saved_with_every_datasets_keys():
    """Runs saved before the per-option schemas hold keys that had no effect: dropped."""
    saved = _with(DEFAULT, {"dataset": {**DEFAULT["dataset"], "name": "digits"}})
    saved["dataset"]["test_fraction"] = 0.3
    saved["model"] = {**DEFAULT["model"], "name": "lenet"}
    cfg = typed(saved)
    validate(cfg)
    assert OmegaConf.get_type(cfg.dataset) is DigitsConfig
    assert _plain(cfg.dataset) == _plain(OmegaConf.structured(DigitsConfig(test_fraction=0.3)))
    assert _plain(cfg.model) == {"name": "lenet", "embedding_size": 64, "l2_normalize": True}
    with pytest.raises(ValueError):
        typed(OmegaConf.create([1, 2]))


# ------------------------------------------------------------------ values


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="epochs"):
        compose(["trainer.epochs=abc"])
    with pytest.raises(ConfigError, match="epochs"):
        tripletlab.compose(["trainer.epochs=abc"])


def test_unknown_group_option_names_the_options():
    with pytest.raises(ConfigError, match="mining/bogus.*batch_all; batch_hard; distance_weig"):
        tripletlab.compose(["mining=bogus"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mining.strategy=hardest"], "choose one of: batch_all, batch_hard, distance_weighted"),
        (
            ["trainer.schedule=x"],
            "trainer.schedule='x' is not valid; choose one of: constant, cosine",
        ),
        (["trainer.augment=x"], "choose one of: none, translate, flip_translate"),
        (
            ["trainer.jit_compile=maybe"],
            "trainer.jit_compile='maybe' is not valid; choose one of: auto, true, false",
        ),
        (["trainer.mixed_precision=float8"], "choose one of: auto, off, float16, bfloat16"),
        (["trainer.progress=x"], "choose one of: auto, bar, log"),
        (["optimized_metric=accuracy"], f"choose one of: {METRICS}"),
        (
            ["sampler.classes_per_batch=1"],
            "sampler.classes_per_batch=1 is not valid; it must be >= 2",
        ),
        (
            ["sampler.images_per_class=1"],
            "sampler.images_per_class=1 is not valid; it must be >= 2",
        ),
        (
            ["sampler.classes_per_batch=0"],
            "sampler.classes_per_batch=0 is not valid; it must be > 0",
        ),
        (
            ["sampler=random", "trainer.batch_size=2"],
            "trainer.batch_size=2 is not valid; it must be >= 3",
        ),
        (["trainer.learning_rate=-1"], "trainer.learning_rate=-1.0 is not valid; it must be > 0"),
        (["trainer.threads=-1"], "trainer.threads=-1 is not valid; it must be >= 0"),
        (["trainer.warmup_epochs=11"], "it must be <= trainer.epochs=10"),
        (["dataset.channels=2"], "dataset.channels=2 is not valid; choose one of: 1, 3"),
        (["dataset=digits", "dataset.test_fraction=1.5"], "it must be between 0 and 1"),
        (["eval.knn_k=0"], "eval.knn_k=0 is not valid; it must be > 0"),
        (["eval.sample_queries=0"], "eval.sample_queries=0 is not valid; it must be > 0"),
        (["eval.full_every=-1"], "eval.full_every=-1 is not valid; it must be >= 0"),
    ],
)
def test_bad_values_name_what_is_valid(overrides, message):
    with pytest.raises(ConfigError) as err:
        tripletlab.compose(overrides)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "jit_compile"),
    [
        (["trainer.mixed_precision=off", "trainer.jit_compile=true"], True),
        (["trainer.mixed_precision=false", "trainer.jit_compile=false"], False),
        # YAML 1.1 reads a bare `off` as False and `true` as a bool: both reach the str
        # fields as "False" and "True".
        (["hydra.searchpath=[file://{conf}]", "experiment=bare"], True),
    ],
    ids=["off-true", "false-false", "yaml-bare-off"],
)
def test_bare_off_and_bools_are_accepted(overrides, jit_compile, tmp_path):
    """Each spelling means precision off and XLA as written, both in what the runtime sets
    up and in what `auto` would not have chosen (a CPU with AMX would take bfloat16)."""
    import keras

    from tripletlab.runtime import resolve_precision, setup_tf

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "bare.yaml").write_text(
        "# @package _global_\ntrainer:\n  mixed_precision: off\n  jit_compile: true\n"
    )
    cfg = compose([o.format(conf=tmp_path) for o in overrides])
    validate(cfg)
    assert resolve_precision(cfg.trainer.mixed_precision, [], flags={"amx_bf16"}) == "off"
    previous = keras.mixed_precision.global_policy()
    try:
        runtime = setup_tf(cfg.trainer)
        assert (runtime.precision, runtime.jit_compile) == ("off", jit_compile)
        assert keras.mixed_precision.global_policy().compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ------------------------------------------------------------------ the command line


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.epochs=abc"], "trainer.epochs"),
        (["mining=bogus"], "bogus"),
        (["sampler.classes_per_batch=0"], "sampler.classes_per_batch"),
        (["dataset=digits", "dataset.root=/x"], "dataset.root is not a key of dataset=digits"),
    ],
)
def test_cli_reports_config_mistakes_without_traceback(overrides, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *overrides, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_two_runs_started_together_get_two_folders(tmp_path):
    # Both runs pass the config checks, then stop at loading data, after Hydra made their
    # folders under tmp_path/outputs.
    missing = tmp_path / "no-such-folder"
    cmd = [sys.executable, str(ROOT / "run.py"), "dataset=image_folder", f"dataset.root={missing}"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        proc.communicate(timeout=120)
    folders = [p for p in (tmp_path / "outputs" / "runs").glob("*/*") if p.is_dir()]
    assert len(folders) == 2


# ------------------------------------------------------------------ datasets from files, splits


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.split=halves"], "dataset.split='halves' is not valid; choose one of: original"),
        (["dataset.train_classes=[0,1]"], "add dataset.split=classes"),
        (["dataset.val_classes=2"], "dataset.val_classes is set but dataset.split=original"),
        (
            ["dataset.split=classes", "dataset.val_classes=0"],
            "dataset.val_classes=0 is not valid; it must be > 0",
        ),
        (["trainer.steps_per_epoch=0"], "trainer.steps_per_epoch=0 is not valid; it must be > 0"),
        (
            ["dataset=cub200", "dataset.root=/x", "dataset.stream=always"],
            "dataset.stream='always' is not valid; choose one of: auto, true, false",
        ),
    ],
)
def test_split_stream_and_steps_values_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose(overrides))


def test_benchmark_layouts_default_to_their_protocol_and_224_rgb():
    for name, split in (("cub200", "classes"), ("cars196", "classes"), ("sop", "original")):
        ds = compose([f"dataset={name}", "dataset.root=/data"]).dataset
        assert (ds.split, ds.image_size, ds.channels, ds.stream) == (split, 224, 3, "auto")
    with pytest.raises(ConfigError, match=r"dataset.root must be set: dataset=inshop"):
        validate(compose(["dataset=inshop"]))
    cfg = compose(["dataset=digits", "dataset.split=classes", "dataset.train_classes=[0,'9']"])
    validate(cfg)
    assert list(cfg.dataset.train_classes) == [0, "9"]
    assert compose(["trainer.steps_per_epoch=5"]).trainer.steps_per_epoch == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [  # the base schema's check and the option's own both run, the base's first
        (
            ["mining=distance_weighted", "model.l2_normalize=false"],
            "mining=distance_weighted needs L2-normalised embeddings: set model.l2_normalize=true",
        ),
        (
            ["mining=distance_weighted", "mining.margin=0"],
            "mining.margin=0.0 is not valid; it must be > 0 (or set mining.soft_margin=true)",
        ),
        (["mining=distance_weighted", "mining.squared=true"], "set mining.squared=false"),
        (["mining=distance_weighted", "mining.cutoff=1.5"], "0 < cutoff < nonzero_loss_cutoff"),
        (["dataset=digits", "dataset.val_classes=2"], "dataset.val_classes is set but"),
    ],
)
def test_an_options_checks_and_its_base_schemas_run(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tripletlab.compose(overrides)
