"""The package as a user installs it: the wheel's contents, and its console commands run
from another folder with nothing of the clone on the path.

The wheel is built from a copy of what the build reads (so the clone gets no build/ folder
and no stale file from one gets in), then installed with ``pip install --no-deps --target``:
the project's venv provides the dependencies (TensorFlow is not downloaded again), the wheel
provides tripletlab and its commands, and PYTHONPATH puts the wheel's copy first.
"""

from __future__ import annotations

import configparser
import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, TINY

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e

BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "tripletlab", "conf")
COMMANDS = (
    "train",
    "sweep",
    "evaluate",
    "visualize",
    "embed",
    "summarize",
    "fetch",
    "export",
    "index",
)
SWEPT_MINING = "mining=batch_all,batch_hard,semi_hard"


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    _pip("wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(base), cwd=base)
    (found,) = base.glob("tripletlab-*.whl")
    return found


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own (its commands in site/bin)."""
    target = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--target", str(target), "-q", str(wheel), cwd=target)
    return target


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """The user's folder: nothing of the clone in it."""
    return tmp_path_factory.mktemp("elsewhere")


def _run(site: Path, cwd: Path, command: str, *args, timeout: int = 300):
    """A console command (or ``python`` itself) with the wheel's tripletlab first."""
    env = {**os.environ, "PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "2"}
    exe = [sys.executable] if command == "python" else [str(site / "bin" / command)]
    proc = subprocess.run(
        [*exe, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{command}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def run_dir(site, elsewhere) -> Path:
    """``tripletlab-train dataset=digits trainer.epochs=1`` (tiny), started in ``elsewhere``."""
    _run(site, elsewhere, "tripletlab-train", *TINY)
    (run,) = (elsewhere / "outputs" / "runs").glob("*/*")
    return run


def test_the_wheel_holds_every_module_the_configs_and_the_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "tripletlab").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules - names == set()  # a new sub-package must be listed in pyproject.toml
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tripletlab").rglob("*.cc")}
    assert sources and sources - names == set()  # built on the user's machine (losses/native.py)
    configs = {
        f"tripletlab/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")
    }
    assert len(configs) > 10 and configs - names == set()
    info = wheel.name.split("-py3")[0] + ".dist-info"
    # setuptools >= 77 (PEP 639) puts it under licenses/, older ones beside METADATA
    assert {f"{info}/LICENSE", f"{info}/licenses/LICENSE"} & names
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode())
    assert set(entry_points["console_scripts"]) == {f"tripletlab-{c}" for c in COMMANDS}
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "Requires-Dist: pyyaml" in metadata
    assert 'tensorflow-cpu>=2.16; sys_platform != "darwin" and extra == "cpu"' in metadata
    assert 'tensorflow>=2.16; sys_platform == "darwin" and extra == "cpu"' in metadata


def test_the_installed_package_is_the_wheels(site, elsewhere):
    code = (
        "import tripletlab, tripletlab.resources as r; print(tripletlab.__file__, r.config_dir())"
    )
    out = _run(site, elsewhere, "python", "-c", code).stdout.split()
    assert [Path(p).is_relative_to(site) for p in out] == [True, True], out
    assert {p.name for p in (site / "bin").iterdir()} >= {f"tripletlab-{c}" for c in COMMANDS}


def test_train_writes_its_run_under_the_current_folder(run_dir, elsewhere):
    assert run_dir.is_relative_to(elsewhere / "outputs" / "runs")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_done"] == 1
    assert (run_dir / "run.log").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()


def test_the_reuse_commands_on_the_run(site, elsewhere, run_dir):
    out = _run(site, elsewhere, "tripletlab-evaluate", run_dir, "eval.knn_k=3").stdout
    assert "precision_at_1" in out
    (result,) = (run_dir / "eval").glob("*.json")
    assert json.loads(result.read_text())["config"]["eval"]["knn_k"] == 3

    out = _run(site, elsewhere, "tripletlab-visualize", run_dir, "--max-points", "50").stdout
    assert "50 of 359 points" in out

    image = elsewhere / "query.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    _run(site, elsewhere, "tripletlab-embed", run_dir, image, "--out", "emb.npy")
    assert np.load(elsewhere / "emb.npy").shape == (1, 8)

    _run(site, elsewhere, "tripletlab-summarize", run_dir.parent)
    with (run_dir.parent / "summary.csv").open(newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok"]


def test_fetch_and_the_sweep_command(site, elsewhere):
    out = _run(site, elsewhere, "tripletlab-fetch", "digits").stdout
    assert "digits: bundled with scikit-learn" in out
    out = _run(site, elsewhere, "tripletlab-sweep", "--dry-run", "model=small_cnn").stdout
    assert out.split() == ["tripletlab-train", "-m", SWEPT_MINING, "model=small_cnn"]


@pytest.mark.slow
def test_a_one_job_sweep(site, elsewhere):
    sweep = elsewhere / "sweep"
    args = [*TINY, "mining=batch_all", "model=small_cnn", f"hydra.sweep.dir={sweep}"]
    _run(site, elsewhere, "tripletlab-sweep", *args)
    with (sweep / "summary.csv").open(newline="") as f:
        rows = [(r["model"], r["mining"], r["status"]) for r in csv.DictReader(f)]
    assert rows == [("small_cnn", "batch_all", "ok")]


def _project() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extra: str | None = None) -> list:
    """pyproject.toml's requirements (an extra's, or the dependencies), parsed."""
    from packaging.requirements import Requirement

    project = _project()
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


# Versions with known security holes (pyproject.toml says which): the floors must refuse them.
UNSAFE = {
    "keras": ["3.8.0", "3.10.0", "3.11.2", "3.12.0", "3.13.1"],
    "pillow": ["9.5.0", "10.2.0"],
    "protobuf": ["3.20.3", "4.25.7"],
}


def test_dependency_floors_refuse_unsafe_versions():
    required = {r.name.lower(): r.specifier for r in _requirements()}
    for name, versions in UNSAFE.items():
        assert [v for v in versions if required[name].contains(v)] == [], name
    assert required["keras"].contains("3.12.2")  # the newest series for Python 3.10


def test_the_venv_meets_every_floor():
    """What pyproject.toml asks for is what the package is tested with: every dependency,
    and each extra's requirement that is installed here (gpu's TensorFlow is not)."""
    from importlib.metadata import PackageNotFoundError, version

    extras = [
        r
        for extra in _project()["optional-dependencies"]
        for r in _requirements(extra)
        if r.marker is None or r.marker.evaluate()
    ]
    unmet = {}
    for requirement, optional in [
        *((r, False) for r in _requirements()),
        *((r, True) for r in extras),
    ]:
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            if not optional:
                unmet[requirement.name] = "not installed"
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet[requirement.name] = f"{installed} is not {requirement.specifier}"
    assert unmet == {}
