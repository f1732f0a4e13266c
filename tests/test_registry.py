"""One registry per group: an entry is the whole option (schema, checks, hooks, code), the
names agree with conf/, and plugins' entry points add options with one clear message when
they fail."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from omegaconf import OmegaConf

import tripletlab
from tests.helpers import ROOT
from tripletlab import config
from tripletlab.errors import ConfigError
from tripletlab.options import setting
from tripletlab.options.model import ModelConfig
from tripletlab.registry import (
    BACKBONES,
    REGISTRIES,
    STRATEGIES,
    Option,
    Registry,
    Strategy,
)

# A declarations module that declares nothing (tripletlab.errors imports no registry).
NOTHING = "tripletlab.errors"


def things(label: str = "THINGS", group: str = "no-such-group") -> Registry:
    return Registry(
        label, "thing.name", group, NOTHING, NOTHING, "tripletlab.options.model:ModelConfig"
    )


# ------------------------------------------------------------------ the Registry itself


def test_register_get_names_and_the_message_for_an_unknown_name():
    reg = things()
    assert reg.names() == ()

    @reg.register("b")
    def b():
        return "b"

    a = reg.register("a")(lambda: "a")
    assert reg.get("b") is b and reg.get("a") is a
    assert reg.names() == ("a", "b") and reg.registered() == ("b", "a")
    assert "a" in reg and "c" not in reg
    assert reg.get(print) is print  # an object passes through
    with pytest.raises(ConfigError) as err:
        reg.get("c")
    assert str(err.value) == "thing.name='c' is not valid; choose one of: a, b"
    with pytest.raises(ConfigError, match="thing.name=3 is not valid"):
        reg.check(3)
    reg.register("a")(a)  # the same object again: fine
    with pytest.raises(ValueError, match="registered already"):
        reg.register("a")(b)
    reg.unregister("a")
    assert reg.names() == ("b",)


def test_an_entry_names_its_code_lazily_and_checks_its_schema():
    reg = things()

    @dataclasses.dataclass
    class WideConfig(ModelConfig):
        name: str = "wide"

    reg.add(Option("wide", WideConfig, target="numpy:linalg.norm"))
    assert reg.schema("wide") is WideConfig and reg.schema("other") is ModelConfig
    assert reg.get("wide") is np.linalg.norm
    reg.add(Option("wide", WideConfig, target="numpy:linalg.norm"))  # the same: fine
    with pytest.raises(ConfigError, match="registers thing.name='wide', which tripletlab"):
        reg.add(Option("wide", WideConfig, target="numpy:mean"), source="plugin x")
    with pytest.raises(ConfigError, match="must be a dataclass subclassing"):
        reg.add(Option("bad", config.TrainerConfig))
    with pytest.raises(ConfigError, match="must default name to 'narrow', not 'wide'"):
        reg.add(Option("narrow", WideConfig))
    reg.add(Option("gone", target="numpy:no_such_function"))
    with pytest.raises(ConfigError, match="cannot import 'numpy:no_such_function'"):
        reg.get("gone")


def test_an_option_without_code_says_so():
    # conf/mining's options, with a home that attaches no code.
    empty = things("EMPTY", group="mining")
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


# ------------------------------------------------------------------ the package's registries


@pytest.mark.parametrize("group", REGISTRIES)
def test_the_options_and_the_code_agree(group):
    """Every conf/<group>/*.yaml is a declared option whose code resolves (TensorFlow's
    modules are imported here), and every declared option has its YAML."""
    registry = REGISTRIES[group]
    assert set(registry.registered()) == set(registry.options())
    assert registry.options() == tuple(
        sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    )
    for name in registry.options():
        assert registry.get(name) is not None


@pytest.mark.parametrize("group", REGISTRIES)
def test_each_option_composes_to_its_own_name_and_schema(group):
    registry = REGISTRIES[group]
    for option in registry.options():
        schema = registry.schema(option)
        node = OmegaConf.structured(schema)
        extra = [
            f"{group}.{k}={'/x' if k == 'root' else 'm.f'}"
            for k in node
            if k != registry.name_key and OmegaConf.is_missing(node, k)
        ]
        cfg = tripletlab.compose([f"{group}={option}", *extra])
        assert cfg[group][registry.name_key] == option
        assert OmegaConf.get_type(cfg[group]) is schema


def test_the_name_lists_derive_from_the_registries():
    from tripletlab.data import DATASET_NAMES

    assert REGISTRIES["dataset"].names() == DATASET_NAMES
    assert "custom" in DATASET_NAMES and "digits" in DATASET_NAMES
    assert STRATEGIES.names() == (
        "batch_all",
        "batch_hard",
        "distance_weighted",
        "easy_positive",
        "semi_hard",
    )
    for alias in ("DATASETS", "MODELS", "STRATEGIES", "SAMPLERS", "LOGGERS", "SCHEMAS"):
        assert not hasattr(config, alias)  # one place: the registries


def test_a_strategy_entry_holds_its_hooks():
    weighted = STRATEGIES.option("distance_weighted")
    assert isinstance(weighted, Strategy)
    assert weighted.step_inputs == ("memory", "seed") and weighted.unit_vectors
    assert weighted.reference is None  # sampled: no brute force of its draws
    assert STRATEGIES.own_keys("distance_weighted") == ("cutoff", "nonzero_loss_cutoff")
    assert STRATEGIES.own_keys("easy_positive") == ("negatives",)
    for name in ("batch_all", "batch_hard", "semi_hard", "easy_positive"):
        assert callable(STRATEGIES.get(name))
        assert STRATEGIES.option(name).reference is not None


def test_unknown_names_at_dispatch_name_the_valid_ones():
    from tripletlab import data, losses
    from tripletlab.data import samplers
    from tripletlab.models import build_model

    with pytest.raises(
        ConfigError,
        match=r"model.name='resnet' is not valid; choose one of: custom, efficientnetv2_b0, "
        r"lenet, mobilenetv3_small, resnet50, small_cnn, vgg_gap",
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
        match="dataset.name='cifar' is not valid; choose one of: cars196, cub200, custom",
    ):
        data.load_dataset(OmegaConf.create({"name": "cifar"}))


def test_checking_a_config_imports_no_tensorflow_and_get_imports_the_code():
    code = (
        "import sys, tripletlab\n"
        "from tripletlab.registry import STRATEGIES\n"
        "tripletlab.compose(['dataset=digits', 'mining=distance_weighted'])\n"
        "assert 'tensorflow' not in sys.modules, 'composing imported TensorFlow'\n"
        "assert callable(STRATEGIES.get('semi_hard'))\n"
        "assert 'tensorflow' in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ plugins


def _plugin(tmp_path, name: str, entry: str, module: str) -> None:
    """A distribution on sys.path (a .dist-info folder, as pip leaves one) whose entry
    point group ``tripletlab.things`` holds ``entry``, and its module."""
    info = tmp_path / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[tripletlab.things]\n{entry}\n")
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module))


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_plugin_adds_an_option_through_its_entry_point(on_path):
    _plugin(
        on_path,
        "thing_plugin",
        "wide = thing_plugin:OPTION",
        """
        import dataclasses
        from tripletlab.options import setting
        from tripletlab.options.model import ModelConfig
        from tripletlab.registry import Option

        @dataclasses.dataclass
        class WideConfig(ModelConfig):
            name: str = "wide"
            width: int = setting(4, "how wide")

        OPTION = Option("wide", WideConfig, target="thing_plugin:WideConfig")
        """,
    )
    reg = things()
    assert reg.names() == ("wide",)
    assert reg.option("wide").plugin == "thing_plugin"
    assert [f.name for f in dataclasses.fields(reg.schema("wide"))][-1] == "width"
    assert reg.get("wide").__name__ == "WideConfig"


@pytest.mark.parametrize(
    ("entry", "module", "message"),
    [
        (
            "wide = thing_broken:OPTION",
            "import no_such_module\n",
            r"^plugin thing_broken \(tripletlab.things: wide = thing_broken:OPTION\) failed to "
            r"import: ModuleNotFoundError: No module named 'no_such_module'; fix or uninstall it$",
        ),
        (
            "wide = thing_broken:OPTION",
            "OPTION = 3\n",
            r"^plugin thing_broken .* gives tripletlab.things a int; it must be a "
            r"tripletlab.registry.Option$",
        ),
        (
            "taken = thing_broken:TAKEN",
            "from tripletlab.registry import Option\nTAKEN = Option('taken')\n",
            r"^plugin thing_broken \(tripletlab.things: taken = thing_broken:TAKEN\) registers "
            r"thing.name='taken', which tripletlab registers already; rename one of them$",
        ),
        # what someone else's code raises is one line whatever it is (issue 26 attack)
        (
            "wide = thing_broken:OPTION",
            "class Halt(BaseException):\n    pass\nraise Halt('stop')\n",
            r"^plugin thing_broken .* failed to import: Halt: stop; fix or uninstall it$",
        ),
        (
            "wide = thing_broken:OPTION",
            "raise RuntimeError('first\\n  second')\n",
            r"^plugin thing_broken .* failed to import: RuntimeError: first second; fix",
        ),
        (
            "wide = thing_broken:OPTION",
            "class E(Exception):\n    def __str__(self):\n        raise ValueError\nraise E\n",
            r"failed to import: E: \(its message cannot be printed\); fix or uninstall it$",
        ),
        (
            "wide = thing_broken:OPTION:extra",
            "",
            r"^plugin thing_broken \(.*\) is not 'package.module:attribute'; fix or uninstall",
        ),
        (
            "wide = thing_broken:OPTION",
            "import dataclasses\n"
            "from tripletlab.options.model import ModelConfig\n"
            "from tripletlab.registry import Option\n"
            "@dataclasses.dataclass\n"
            "class Wide(ModelConfig):\n"
            "    name: str = 'wide'\n"
            "    tags: set = None\n"
            "OPTION = Option('wide', Wide)\n",
            r"^plugin thing_broken .*: the schema of no-such-group=wide is not a valid config: "
            r"ValidationError: Unexpected type annotation: set",
        ),
    ],
)
def test_a_broken_plugin_is_one_message_naming_it(on_path, monkeypatch, entry, module, message):
    monkeypatch.delitem(sys.modules, "thing_broken", raising=False)
    _plugin(on_path, "thing_broken", entry, module)
    reg = things()
    reg.add(Option("taken", target="numpy:mean"))
    with pytest.raises(ConfigError, match=message):
        reg.names()


def test_ctrl_c_while_a_plugin_imports_is_not_blamed_on_it(on_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "thing_slow", raising=False)
    _plugin(on_path, "thing_slow", "wide = thing_slow:OPTION", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        things().names()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            Strategy("careless", step_inputs=("seeds",)),
            r"^here: the step_inputs of mining.strategy='careless' must be a tuple of "
            r"'memory', 'seed', not \('seeds',\)$",
        ),
        (Strategy("careless", step_inputs="seed"), r"must be a tuple of .*, not 'seed'$"),
        (
            Strategy("careless", target=42, step_inputs=()),
            r"^here: the target of mining.strategy='careless' must be a function or "
            r"'package.module:function', not int$",
        ),
        # its Keras loss class would replace semi_hard's, in Keras' registry too
        (
            Strategy("SEMI_HARD", step_inputs=()),
            r"^here: the Keras loss class of mining.strategy='SEMI_HARD' would be "
            r"TripletSemiHardLoss, the class of tripletlab's mining.strategy='semi_hard'; ",
        ),
        (
            Strategy("careless", step_inputs=(), keras_class="TripletSemiHardLoss"),
            r"'careless' would be TripletSemiHardLoss, the class of tripletlab's",
        ),
    ],
)
def test_a_strategy_the_step_cannot_call_is_refused_when_added(entry, message):
    """Not a TypeError while the first step is traced, nor a Keras class replaced."""
    STRATEGIES.registered()  # the package's own declared first, as before a plugin's
    with pytest.raises(ConfigError, match=message):
        STRATEGIES.add(entry, "here")
    assert entry.name not in STRATEGIES.registered()


def test_a_strategy_target_naming_no_function_is_one_message():
    STRATEGIES.add(Strategy("careless", target="math:pi", step_inputs=()))
    try:
        with pytest.raises(ConfigError, match=r"'careless': its target 'math:pi' is not a func"):
            STRATEGIES.get("careless")
    finally:
        STRATEGIES.unregister("careless")


@dataclasses.dataclass
class _ExitingCheck(ModelConfig):
    name: str = "exiting"

    def check(self, cfg):
        sys.exit(0)  # would end the command with status 0 and no run


def test_a_plugin_check_that_exits_is_one_message():
    node = OmegaConf.structured(_ExitingCheck)
    with pytest.raises(ConfigError, match=r"^model: the check of .*_ExitingCheck failed "):
        config.check_node(node, _ExitingCheck, "model.", None)


# ------------------------------------------------------------------ extending in a session


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
        assert "tiny" in BACKBONES.names()
        assert OmegaConf.get_type(cfg.model) is ModelConfig
        model = build_model(cfg.model, (8, 8, 1), weight_decay=1e-4)
        emb = model(np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)).numpy()
        assert emb.shape == (2, 3)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
        assert model.losses  # the regulariser reached the backbone's layers
    finally:
        BACKBONES.unregister("tiny")
    with pytest.raises(
        ConfigError, match="model.name='tiny' is not valid; choose one of: custom, efficientnetv2"
    ):
        tripletlab.compose([searchpath, "model=tiny"])


def test_an_option_with_keys_of_its_own_declares_a_schema(tmp_path):
    @dataclasses.dataclass
    class WideConfig(ModelConfig):
        name: str = "wide"
        width: int = setting(16, "how wide", bound=">0")

        def check(self, cfg):
            if self.width > self.embedding_size:
                raise ConfigError("model.width must be <= model.embedding_size")

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "wide.yaml").write_text("defaults:\n  - /schema/model/wide@_here_\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    BACKBONES.add(Option("wide", WideConfig, target="keras.layers:Flatten"))
    try:
        cfg = tripletlab.compose([searchpath, "model=wide", "model.width=4"])
        assert (cfg.model.name, cfg.model.width) == ("wide", 4)
        with pytest.raises(ConfigError, match="model.num_channels is not a key of model=wide"):
            tripletlab.compose([searchpath, "model=wide", "model.num_channels=4"])
        with pytest.raises(ConfigError, match="model.width=0 is not valid; it must be > 0"):
            tripletlab.compose([searchpath, "model=wide", "model.width=0"])
        with pytest.raises(ConfigError, match="model.width must be <= model.embedding_size"):
            tripletlab.compose([searchpath, "model=wide", "model.width=65"])
    finally:
        BACKBONES.unregister("wide")


def test_a_broken_plugin_stops_the_command_line_with_one_line(tmp_path):
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tripletlab.strategies]\nbroken = broken_mod:S\n")
    (tmp_path / "broken_mod.py").write_text("import no_such_dependency\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "run.py", "dataset=digits"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: plugin broken-plugin (tripletlab.strategies: broken = broken_mod:S) failed to "
        "import: ModuleNotFoundError: No module named 'no_such_dependency'; fix or uninstall it"
    )


# ------------------------------------------------------------------ the docs' table


def _singular(label: str) -> str:
    """STRATEGIES -> strategy, BACKBONES -> backbone."""
    plural = label.lower()
    return plural[:-3] + "y" if plural.endswith("ies") else plural.removesuffix("s")


def test_the_extending_guide_maps_each_option_to_its_group_key_registry_and_entry_points():
    """docs/extending.md's table: one row per registry, each naming its option kind, Hydra
    group, key, registry constant and entry point group as tripletlab.registry has them;
    the example plugin's entry point groups are among them."""
    import tomllib

    import tripletlab.registry as registry

    page = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    head = "| option | Hydra group | registry (`tripletlab.registry`) | key naming it |"
    assert head in page
    table = page[page.index(head) :].split("\n\n")[0].splitlines()[2:]
    rows = [[cell.strip().strip("`") for cell in line.split("|")[1:6]] for line in table]
    assert sorted(group for _, group, *_ in rows) == sorted(REGISTRIES)
    for kind, group, constant, key, entry_points in rows:
        reg = REGISTRIES[group]
        assert getattr(registry, constant) is reg, (group, constant)
        assert (key, entry_points) == (reg.key, reg.entry_point_group), group
        assert kind.split()[0] == _singular(reg.label), group
    example = ROOT / "examples" / "tripletlab-plugin-example" / "pyproject.toml"
    declared = tomllib.loads(example.read_text())["project"]["entry-points"]
    groups = {reg.entry_point_group for reg in REGISTRIES.values()}
    assert {g for g in declared if g.startswith("tripletlab.")} <= groups
