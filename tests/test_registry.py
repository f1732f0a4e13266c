"""One registry per kind: names, dispatch and messages agree with conf/ and with the code."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

import tripletlab
from tests.helpers import ROOT
from tripletlab import config
from tripletlab.errors import ConfigError
from tripletlab.registry import BACKBONES, DATASETS, LOSSES, SAMPLERS, Registry

REGISTRIES = {"dataset": DATASETS, "model": BACKBONES, "mining": LOSSES, "sampler": SAMPLERS}


# ------------------------------------------------------------------ the Registry itself


def test_register_get_names_and_the_message_for_an_unknown_name():
    things = Registry("THINGS", "thing.name", home="tripletlab.errors", group="no-such-group")
    assert things.names() == ()

    @things.register("b")
    def b():
        return "b"

    a = things.register("a")(lambda: "a")
    assert things.get("b") is b and things.get("a") is a
    assert things.names() == ("b", "a") == things.registered()
    assert "a" in things and "c" not in things
    assert things.get(print) is print  # an object passes through
    with pytest.raises(ConfigError) as err:
        things.get("c")
    assert str(err.value) == "thing.name='c' is not valid; choose one of: b, a"
    with pytest.raises(ConfigError, match="thing.name=3 is not valid"):
        things.check(3)
    things.register("a")(a)  # the same object again: fine
    with pytest.raises(ValueError, match="registered already"):
        things.register("a")(b)
    things.unregister("a")
    assert things.names() == ("b",)


def test_an_option_without_code_says_so():
    # conf/mining's options, with a home that registers nothing.
    empty = Registry("EMPTY", "mining.strategy", home="tripletlab.errors", group="mining")
    assert empty.names() == (
        "batch_all",
        "batch_hard",
        "distance_weighted",
        "easy_positive",
        "semi_hard",
    )
    assert empty.check("batch_all") == "batch_all"
    with pytest.raises(ConfigError, match=r"has no implementation: conf/mining/batch_all.yaml"):
        empty.get("batch_all")


# ------------------------------------------------------------------ the four registries


@pytest.mark.parametrize("group", REGISTRIES)
def test_the_options_and_the_code_agree(group):
    """Every conf/<group>/*.yaml has code registered by the registry's home module, and
    every implementation there has its YAML option."""
    registry = REGISTRIES[group]
    importlib.import_module(registry.home)
    home = registry.home
    own = {
        n
        for n in registry.registered()
        if (module := registry.get(n).__module__) == home or module.startswith(f"{home}.")
    }
    assert own == set(registry.options())
    assert registry.options() == tuple(
        sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    )


@pytest.mark.parametrize("group", REGISTRIES)
def test_each_option_composes_to_its_own_name(group):
    for option in REGISTRIES[group].options():
        defaults = {f.name: f.default for f in dataclasses.fields(config.schema_for(group, option))}
        extra = ["dataset.root=/x"] if defaults.get("root") == "???" else []  # no default
        cfg = tripletlab.compose([f"{group}={option}", *extra])
        assert cfg[group][config.NAME_KEYS[group]] == option


def test_the_name_lists_derive_from_the_registries():
    from tripletlab.config import DATASETS as datasets
    from tripletlab.config import MODELS, STRATEGIES
    from tripletlab.config import SAMPLERS as samplers
    from tripletlab.data import DATASET_NAMES

    assert (
        datasets
        == DATASET_NAMES
        == (
            *("cars196", "cub200", "digits", "fashion_mnist", "image_folder", "inshop"),
            *("mnist", "sop"),
        )
    )
    assert (
        MODELS
        == BACKBONES.names()
        == (
            *("efficientnetv2_b0", "lenet", "mobilenetv3_small", "resnet50", "small_cnn"),
            "vgg_gap",
        )
    )
    assert LOSSES.names() == STRATEGIES
    assert STRATEGIES == (
        "batch_all",
        "batch_hard",
        "distance_weighted",
        "easy_positive",
        "semi_hard",
    )
    assert samplers == SAMPLERS.names() == ("pk", "random")
    with pytest.raises(AttributeError):
        config.NOT_A_NAME  # noqa: B018


def test_unknown_names_at_dispatch_name_the_valid_ones():
    from tripletlab import data, losses
    from tripletlab.data import samplers
    from tripletlab.models import build_model

    with pytest.raises(
        ConfigError,
        match=r"model.name='resnet' is not valid; choose one of: efficientnetv2_b0, lenet, "
        r"mobilenetv3_small, resnet50, small_cnn, vgg_gap",
    ):
        build_model(OmegaConf.create({"name": "resnet", "embedding_size": 4}), (8, 8, 1))
    with pytest.raises(
        ConfigError, match="choose one of: batch_all, batch_hard, distance_weighted"
    ):
        losses.triplet_loss([0, 0, 1], np.zeros((3, 2), np.float32), strategy="hardest")
    with pytest.raises(
        ConfigError, match="sampler.name='fifo' is not valid; choose one of: pk, random"
    ):
        samplers.epoch_batches(np.zeros(4), OmegaConf.create({"name": "fifo"}), 2, 0, 0)
    with pytest.raises(
        ConfigError,
        match="dataset.name='cifar' is not valid; choose one of: cars196, cub200, digits",
    ):
        data.load_dataset(OmegaConf.create({"name": "cifar"}))


def test_checking_a_config_imports_no_tensorflow_and_get_imports_the_code():
    code = (
        "import sys, tripletlab\n"
        "from tripletlab.registry import LOSSES\n"
        "tripletlab.compose(['dataset=digits'])\n"
        "assert 'tensorflow' not in sys.modules, 'composing imported TensorFlow'\n"
        "assert callable(LOSSES.get('semi_hard'))\n"
        "assert 'tripletlab.losses' in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ extending


def test_a_backbone_is_one_function_plus_one_yaml_file(tmp_path):
    import keras

    from tripletlab.models import build_model

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.yaml").write_text(
        "# A test backbone.\nname: tiny\nembedding_size: 3\n"
    )
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"

    @BACKBONES.register("tiny")
    def tiny(x, cfg, reg):  # the function: images [B, H, W, C] -> features [B, F]
        return keras.layers.Flatten()(keras.layers.Conv2D(2, 3, kernel_regularizer=reg)(x))

    try:
        cfg = tripletlab.compose([searchpath, "model=tiny", "dataset=digits"])
        assert "tiny" in config.MODELS
        assert OmegaConf.get_type(cfg.model) is config.ModelConfig
        model = build_model(cfg.model, (8, 8, 1), weight_decay=1e-4)
        emb = model(np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)).numpy()
        assert emb.shape == (2, 3)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
        assert model.losses  # the regulariser reached the backbone's layers
    finally:
        BACKBONES.unregister("tiny")
    with pytest.raises(
        ConfigError, match="model.name='tiny' is not valid; choose one of: efficientnetv2_b0, lenet"
    ):
        tripletlab.compose([searchpath, "model=tiny"])


def test_an_option_with_keys_of_its_own_gets_a_schema(tmp_path):
    @dataclasses.dataclass
    class WideConfig(config.ModelConfig):
        name: str = "wide"
        width: int = 16

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "wide.yaml").write_text("defaults:\n  - /schema/model/wide@_here_\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    BACKBONES.register("wide")(lambda x, cfg, reg: x)
    config.register_schema("model", "wide", WideConfig)
    try:
        cfg = tripletlab.compose([searchpath, "model=wide", "model.width=4"])
        assert (cfg.model.name, cfg.model.width) == ("wide", 4)
        with pytest.raises(ConfigError, match="model.num_channels is not a key of model=wide"):
            tripletlab.compose([searchpath, "model=wide", "model.num_channels=4"])
    finally:
        BACKBONES.unregister("wide")
        del config.SCHEMAS["model"]["wide"]
    with pytest.raises(TypeError, match="must subclass ModelConfig"):
        config.register_schema("model", "bad", config.MiningConfig)
