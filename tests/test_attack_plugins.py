"""Attacks on plugins and ``_target_`` (issue 26): a broken, clashing or misbehaving plugin
and a user callable that breaks its contract are one ``error:`` line, never a traceback.

Plugins here are "installed" without pip: a folder with a ``*.dist-info`` (entry points)
and a ``hydra_plugins`` SearchPathPlugin, put on PYTHONPATH of a child process, which is
what importlib.metadata and Hydra's plugin scan read after ``pip install``; nothing is left
installed in the venv."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tripletlab
from tests.helpers import ROOT, TINY, read_rows, read_summary
from tripletlab.errors import ConfigError

HEAD = "from dataclasses import dataclass\nfrom tripletlab.registry import Option, Strategy\n"
SCHEMA = """
from tripletlab.options import setting
from tripletlab.options.mining import MiningConfig
@dataclass
class Cfg(MiningConfig):
    strategy: str = "{name}"
    k: int = setting(3, "k")
    def check(self, cfg):
        raise ValueError("my check blew up")
ENTRY = Strategy("{name}", Cfg, target="math:sqrt", step_inputs=())
"""
# entry point module bodies (the entry point is <module>:ENTRY) -> what the error names
BROKEN = {
    "import_error": ("import not_a_module_xyz", "ModuleNotFoundError"),
    "syntax_error": ("def f(:\n    pass", "SyntaxError"),
    "runtime_error": ("raise RuntimeError('boom')", "RuntimeError: boom"),
    "exits": ("import sys\nsys.exit(0)", "SystemExit"),
    "missing_attr": ("X = 1", "AttributeError"),
    "not_an_option": ("ENTRY = 'hello'", "gives tripletlab.strategies a str"),
    "wrong_kind": ("ENTRY = Option('wrong_kind')", "gives tripletlab.strategies a Option"),
    "semi_hard": ("ENTRY = Strategy('semi_hard', target='math:sqrt')", "which tripletlab"),
    "other_name": ("ENTRY = Strategy('batch_hard')", "gives the option 'batch_hard'"),
    "base_exception": ("class Halt(BaseException):\n    pass\nraise Halt('h')", "Halt: h"),
    "multi_line": ("raise RuntimeError('a\\nb')", "RuntimeError: a b; fix"),
    "set_field": (
        SCHEMA.format(name="set_field").replace('k: int = setting(3, "k")', "k: set = None"),
        "the schema of mining=set_field is not a valid config: ValidationError: Unexpected",
    ),
}


def make_plugin(root: Path, dist: str, entries: dict[str, tuple[str, str, str]]) -> Path:
    """A plugin folder: ``entries`` maps an entry point name to (group, module, body)."""
    pkg = dist.replace("-", "_")
    folder = root / dist
    (folder / pkg / "conf" / "mining").mkdir(parents=True)
    (folder / pkg / "__init__.py").write_text("")
    (folder / pkg / "conf" / "__init__.py").write_text("")
    info = folder / f"{pkg}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = []
    for name, (group, module, body) in entries.items():
        (folder / pkg / f"{module}.py").write_text(HEAD + body + "\n")
        lines += [f"[tripletlab.{group}]", f"{name} = {pkg}.{module}:ENTRY"]
        yaml = f"defaults:\n  - /schema/mining/{name}@_here_\n"
        (folder / pkg / "conf" / "mining" / f"{name}.yaml").write_text(yaml)
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    hydra = folder / "hydra_plugins" / pkg
    hydra.mkdir(parents=True)
    (hydra / "__init__.py").write_text("")
    (hydra / "searchpath.py").write_text(
        "from hydra.plugins.search_path_plugin import SearchPathPlugin\n"
        f"class SP(SearchPathPlugin):\n    def manipulate_search_path(self, sp):\n"
        f"        sp.append(provider='{dist}', path='pkg://{pkg}/conf')\n"
    )
    return folder


def run(paths: list[Path], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout[-500:]
    lines = [x for x in proc.stderr.splitlines() if x.strip() and "oneDNN" not in x]
    lines = [x for x in lines if not x.startswith(("WARNING: All log", "I0000"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("variant", sorted(BROKEN))
def test_a_broken_plugin_is_one_line_naming_it_in_help(tmp_path, variant):
    body, needle = BROKEN[variant]
    plugin = make_plugin(tmp_path, "tl-attack-x", {variant: ("strategies", "mod", body)})
    proc = run([plugin], "run.py", "--help")
    assert_one_error_line(proc, "tl-attack-x", needle)


@pytest.mark.slow  # bench losses imports TensorFlow
def test_a_broken_plugin_is_one_line_in_the_reference_and_bench(tmp_path):
    plugin = make_plugin(tmp_path, "tl-attack-x", {"b": ("strategies", "mod", "raise OSError")})
    out = tmp_path / "ref.md"
    assert_one_error_line(
        run([plugin], "-m", "tripletlab.config_reference", "--output", str(out)), "tl-attack-x"
    )
    assert not out.exists()
    proc = run([plugin], "-m", "tripletlab.bench", "losses", "--sizes", "4", "--repeats", "1")
    assert_one_error_line(proc, "tl-attack-x", "OSError")


def test_two_plugins_registering_one_name_is_one_line_naming_both(tmp_path):
    body = "ENTRY = Strategy('twice', target='math:sqrt')"
    a = make_plugin(tmp_path, "tl-attack-a", {"twice": ("strategies", "mod", body)})
    b = make_plugin(tmp_path, "tl-attack-b", {"twice": ("strategies", "mod", body)})
    line = assert_one_error_line(run([a, b], "run.py", "--help"), "'twice'")
    assert "tl-attack-a" in line and "tl-attack-b" in line


def test_a_broken_plugin_fails_every_time_it_is_asked(tmp_path):
    plugin = make_plugin(tmp_path, "tl-attack-x", {"b": ("strategies", "mod", "raise OSError")})
    code = """
        import tripletlab
        from tripletlab.errors import ConfigError
        for _ in range(2):
            try:
                tripletlab.compose(["mining=batch_hard"])
                print("composed")
            except ConfigError as err:
                print("error", "tl-attack-x" in str(err))
    """
    proc = run([plugin], "-c", textwrap.dedent(code))
    assert proc.stdout.split("\n")[:2] == ["error True", "error True"], proc.stderr[-2000:]


def test_a_plugin_check_that_raises_is_one_line(tmp_path):
    body = SCHEMA.format(name="badcheck")
    plugin = make_plugin(tmp_path, "tl-attack-x", {"badcheck": ("strategies", "mod", body)})
    proc = run([plugin], "run.py", "mining=badcheck", "dataset=digits", f"hydra.run.dir={tmp_path}")
    assert_one_error_line(proc, "mining: the check of", "ValueError: my check blew up")


USER_CODE = """
import numpy as np

def _data(n=40):
    x = np.random.default_rng(0).integers(0, 255, size=(n, 6, 6, 1), dtype=np.uint8)
    return x, np.arange(n) % 4

def loader(labels=None, names=list("abcd"), train=None, test=None):
    def load(cfg):
        x, y = _data()
        y = y if labels is None else labels(y)
        xt = x[30:] if test is None else test
        return (x[:30] if train is None else train), y[:30], xt, y[30:], names
    return load

float_labels = loader(lambda y: y + 0.5)
str_labels = loader(lambda y: np.array(list("abcd"))[y])
bool_labels = loader(lambda y: y.astype(bool))
out_of_range = loader(lambda y: y + 3)
negative = loader(lambda y: y - 1)
huge = loader(lambda y: y.astype(np.uint64) + np.uint64(2**63))
names_int = loader(names=4)
names_none = loader(names=None)
empty = loader(train=np.zeros((0, 6, 6, 1), np.uint8), labels=lambda y: y[:0])
zero_height = loader(train=np.zeros((30, 0, 6, 1), np.uint8))
ragged = loader(train=[np.zeros((6, 6, 1), np.uint8)] * 29 + [np.zeros((7, 6, 1), np.uint8)])
other_size = loader(test=np.zeros((10, 8, 8, 1), np.uint8))

def as_dataset(**changes):
    def load(cfg):
        from tripletlab.data.base import Dataset
        x, y = _data()
        parts = dict(x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
        return Dataset("mine", **{**parts, **changes}, class_names=list("abcd"), source="me")
    return load

dataset_floats = as_dataset(x_train=np.zeros((30, 6, 6, 1), np.float32))
dataset_short_labels = as_dataset(y_train=np.arange(5) % 4)
dataset_gallery = as_dataset(x_gallery=np.zeros((4, 6, 6, 1), np.uint8), y_gallery=np.arange(6, 10))

def numpy_features(x, cfg, reg):
    return np.zeros((2, 3), np.float32)

class Tracker:
    def __init__(self, logger_cfg, folder, config):
        pass
    def on_epoch_end(self, row):
        raise SystemExit(3)

def exiting_tracker(logger_cfg, folder, config):
    raise SystemExit("bye")

class Halt(BaseException):
    pass

class HaltingTracker:
    def __init__(self, logger_cfg, folder, config):
        pass
    def on_epoch_end(self, row):
        raise Halt("in a hook")

def halting_tracker(logger_cfg, folder, config):
    raise Halt("while built")

NOT_CALLABLE = 3

def disconnected(x, cfg, reg):
    import keras
    return keras.layers.Flatten()(keras.Input((6, 6, 1)))

def unknown_width(x, cfg, reg):
    import keras
    return keras.layers.Lambda(lambda t: keras.ops.reshape(t, (keras.ops.shape(t)[0], -1)))(x)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "attack_user.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "attack_user"


@pytest.mark.parametrize(
    "target, message",
    [
        ("float_labels", r"train labels must be integers in \[0, 4\).*float64"),
        ("str_labels", r"train labels must be integers.*<U1"),
        ("bool_labels", r"train labels must be integers.*bool"),
        ("out_of_range", r"train labels must be integers in \[0, 4\).*from 3 to 6"),
        ("negative", r"train labels must be integers in \[0, 4\).*from -1 to 2"),
        ("huge", r"train labels must be integers.*uint64"),
        ("names_int", "class_names must be a list, got int"),
        ("names_none", "class_names must be a list, got NoneType"),
        ("empty", r"train split must be uint8 images \[N, H, W, C\].*none empty"),
        ("zero_height", r"train split must be uint8 images.*\(30, 0, 6, 1\)"),
        ("ragged", "train split is not an array"),
        ("other_size", r"test images \(8, 8, 1\) differ; .*dataset.image_size"),
        # a tripletlab.data.Dataset returned is checked the same (it was taken as it was)
        ("dataset_floats", r"train split must be uint8 images \[N, H, W, C\].*got float32"),
        ("dataset_short_labels", r"train split must be uint8 .* and \(5,\)"),
        ("dataset_gallery", r"gallery labels must be integers in \[0, 4\).*from 6 to 9"),
    ],
)
def test_a_loader_breaking_its_contract_is_one_config_error(user_module, target, message):
    from tripletlab.data import load_dataset

    cfg = tripletlab.compose(["dataset=custom", f"dataset._target_={user_module}.{target}"])
    with pytest.raises(ConfigError, match=message):
        load_dataset(cfg.dataset)


def test_a_backbone_returning_an_array_is_one_config_error(user_module):
    from tripletlab.models import build_model

    cfg = tripletlab.compose(["model=custom", f"model._target_={user_module}.numpy_features"])
    with pytest.raises(ConfigError, match=r"returned ndarray of shape \(2, 3\); it must return"):
        build_model(cfg.model, (6, 6, 1))


def test_a_tracker_that_exits_does_not_end_the_run(user_module, tmp_path, caplog):
    from tripletlab.run_folder import RunFolder
    from tripletlab.tracking import make_trackers
    from tripletlab.training.callbacks import Callbacks

    cfg = tripletlab.compose(["logger=custom", f"logger._target_={user_module}.exiting_tracker"])
    trackers = make_trackers(cfg, RunFolder(tmp_path))  # SystemExit while built: a warning
    assert "custom tracker failed (SystemExit: bye)" in caplog.text
    cfg = tripletlab.compose(["logger=custom", f"logger._target_={user_module}.Tracker"])
    (tracker,) = [t for t in make_trackers(cfg, RunFolder(tmp_path)) if not hasattr(t, "name")]
    callbacks = Callbacks()
    callbacks.extend([tracker], guarded=True)
    callbacks.on_epoch_end({"epoch": 1})  # SystemExit in a hook: a warning
    assert "Tracker failed (SystemExit: 3)" in caplog.text
    assert trackers is not None


@pytest.mark.parametrize(
    "target, message",
    [
        ("{m}.disconnected", r"returned features not computed from its input x \(.*\); build"),
        ("{m}.unknown_width", r"returned KerasTensor of shape \(None, None\); it must return"),
        ("{m}.NOT_CALLABLE", "names a value of type int, which cannot be called"),
        # a builtin without a signature to check: the call itself fails
        ("collections.OrderedDict", r"'collections.OrderedDict' must take 3 positional arg"),
        # Hydra's instantiate refuses it (its blocklist): not its multi-line exception
        ("os.chown", r"^model._target_='os.chown' cannot be called: "),
    ],
)
def test_a_backbone_target_that_cannot_make_features_is_one_config_error(
    user_module, target, message
):
    from tripletlab.models import build_model

    target = target.format(m=user_module)
    cfg = tripletlab.compose(["model=custom", f"model._target_={target}"])
    with pytest.raises(ConfigError, match=message) as err:
        build_model(cfg.model, (6, 6, 1))
    assert "\n" not in str(err.value)


def test_a_tracker_raising_any_base_exception_is_a_warning(user_module, tmp_path, caplog):
    """Not only Exception and SystemExit: a BaseException of its own too (Ctrl-C aside)."""
    from tripletlab.run_folder import RunFolder
    from tripletlab.tracking import make_trackers
    from tripletlab.training.callbacks import Callbacks

    cfg = tripletlab.compose(["logger=custom", f"logger._target_={user_module}.halting_tracker"])
    make_trackers(cfg, RunFolder(tmp_path))
    assert "custom tracker failed (Halt: while built)" in caplog.text
    cfg = tripletlab.compose(["logger=custom", f"logger._target_={user_module}.HaltingTracker"])
    (tracker,) = [t for t in make_trackers(cfg, RunFolder(tmp_path)) if not hasattr(t, "name")]
    callbacks = Callbacks()
    callbacks.extend([tracker], guarded=True)
    callbacks.on_epoch_end({"epoch": 1})
    callbacks.on_epoch_end({"epoch": 2})  # switched off after the first
    assert caplog.text.count("HaltingTracker failed (Halt: in a hook)") == 1


PER_ANCHOR = """
def per_anchor(labels, embeddings, margin=0.5, squared=False, soft_margin=False, **_):
    import tensorflow as tf
    return tf.norm(embeddings, axis=1), tf.constant(0.5)  # forgot to reduce: [B]
from tripletlab.options.mining import MiningConfig
@dataclass
class Cfg(MiningConfig):
    strategy: str = "per_anchor"
ENTRY = Strategy("per_anchor", Cfg, target=per_anchor, step_inputs=())
"""


@pytest.mark.slow  # trains (TensorFlow) in a child process, twice
def test_a_plugin_strategy_returning_a_per_anchor_loss_is_one_line(tmp_path):
    """Before the first step trains on it (the gradient would follow the sum of a [B] loss)
    and in its Keras loss class (Keras would average it): one line naming the plugin."""
    plugin = make_plugin(tmp_path, "tl-attack-x", {"per_anchor": ("strategies", "mod", PER_ANCHOR)})
    out = tmp_path / "run"
    proc = run([plugin], "run.py", "mining=per_anchor", *TINY, f"hydra.run.dir={out}")
    line = assert_one_error_line(
        proc,
        "mining.strategy='per_anchor' (plugin tl-attack-x) returned a loss of shape [16]",
        "it must return (loss, fraction), each a floating scalar []",
    )
    summary = read_summary(out)  # failed before an epoch was recorded
    assert summary["status"] == "failed", summary
    assert not (out / "metrics.csv").exists() or not read_rows(out)
    keras_use = """
        import numpy as np
        from tripletlab.errors import ConfigError
        from tripletlab.losses.keras import CLASSES
        try:
            CLASSES["per_anchor"]()(np.arange(16) % 4, np.ones((16, 3), np.float32))
        except ConfigError as err:
            print(err)
    """
    proc = run([plugin], "-c", textwrap.dedent(keras_use))
    assert proc.stdout.strip() == line.removeprefix("error: "), proc.stderr[-2000:]
