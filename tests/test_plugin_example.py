"""examples/tripletlab-plugin-example, installed with pip into this venv (and uninstalled
after): its four options appear in --help, the configuration reference, a sweep's summary
and HParams and bench losses, with no change to tripletlab; its strategy matches its brute
force. Each check runs in a new process: entry points and .pth files are read at start."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import ROOT
from tests.tracking.test_trackers import TensorBoard

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
EXAMPLE = ROOT / "examples" / "tripletlab-plugin-example"
PLUGIN_OPTIONS = {"mining": "random_hard", "model": "mlp", "dataset": "npz", "logger": "jsonl"}


def _pip(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def installed():
    # compat: a .pth with the project folder, so the hydra_plugins namespace package (the
    # SearchPathPlugin) is found by Hydra's scan as from a regular install.
    _pip(
        "install",
        "--no-build-isolation",
        "--no-deps",
        "--config-settings",
        "editable_mode=compat",
        "-e",
        str(EXAMPLE),
    )
    try:
        yield
    finally:
        _pip("uninstall", "-y", "tripletlab-plugin-example")


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _python(code: str) -> str:
    proc = _run([sys.executable, "-c", textwrap.dedent(code)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_options_appear_in_help_and_the_reference_and_compose_without_tensorflow(installed):
    proc = _run([sys.executable, "run.py", "--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    groups = proc.stdout.split("== Configuration groups ==")[1]
    for group, option in PLUGIN_OPTIONS.items():
        line = next(x for x in groups.splitlines() if x.startswith(f"{group}: "))
        assert option in line.split(": ")[1].split(", "), line
    out = _python(
        """
        import sys, tripletlab
        from tripletlab.config_reference import reference_markdown
        from tripletlab.errors import ConfigError
        cfg = tripletlab.compose(["mining=random_hard", "model=mlp", "model.hidden=8",
                                  "dataset=npz", "dataset.root=/x", "logger=jsonl"])
        assert "tensorflow" not in sys.modules
        print(cfg.mining.strategy, cfg.model.hidden, cfg.logger.file)
        text = reference_markdown()
        for section in ("mining=random_hard", "model=mlp", "dataset=npz", "logger=jsonl"):
            assert "### " in text and section in text, section
        try:
            tripletlab.compose(["mining=random_hard", "mining.memory_size=8"])
        except ConfigError as err:
            print(err)
        """
    )
    assert out.splitlines()[0] == "random_hard 8 tracker.jsonl"
    assert out.splitlines()[1] == (
        "mining=random_hard mines no cross-batch memory: set mining.memory_size=0"
    )


def test_the_strategy_matches_its_brute_force_and_has_a_keras_class(installed):
    out = _python(
        """
        import numpy as np, tensorflow as tf
        from tripletlab.losses import reference
        from tripletlab.losses.keras import CLASSES
        from tripletlab.registry import STRATEGIES
        rng = np.random.default_rng(0)
        labels, emb = rng.integers(0, 4, 20), rng.normal(size=(20, 5))
        fn = STRATEGIES.get("random_hard")
        for soft in (False, True):
            e = tf.constant(emb)
            with tf.GradientTape() as tape:
                tape.watch(e)
                loss, fraction = fn(labels, e, 0.5, False, soft, seed=tf.constant([5, 9]))
            grad = tape.gradient(loss, e).numpy()
            want = reference.triplet_loss(labels, emb, "random_hard", 0.5, False, soft, seed=(5, 9))
            want_grad = reference.triplet_loss_grad(
                labels, emb, "random_hard", 0.5, False, soft, seed=(5, 9))
            np.testing.assert_allclose([float(loss), float(fraction)], want, rtol=1e-9)
            np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)
        other = reference.picks(labels, emb, "random_hard", seed=(5, 10))
        assert other != reference.picks(labels, emb, "random_hard", seed=(5, 9))
        print(CLASSES["random_hard"].__name__)
        # The whole option is one module: its schema, code and brute force.
        import inspect
        from tripletlab.registry import REGISTRIES
        for group, name in [("mining", "random_hard"), ("model", "mlp"), ("logger", "jsonl")]:
            registry = REGISTRIES[group]
            entry = registry.option(name)
            parts = [registry.schema(name), registry.get(name), getattr(entry, "reference", None)]
            print(sorted({inspect.getsourcefile(p).rsplit("/", 1)[1] for p in parts if p}))
        """
    )
    assert out.splitlines() == [
        "TripletRandomHardLoss",
        "['random_hard.py']",
        "['mlp.py']",
        "['jsonl.py']",
    ]


def test_a_sweep_over_plugin_and_builtin_options_and_bench_losses(installed, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:400], order[400:600]
    np.savez(
        tmp_path / "data.npz",
        x_train=images[train],
        y_train=digits.target[train],
        x_test=images[test],
        y_test=digits.target[test],
    )
    sweep = tmp_path / "sweep"
    proc = _run(
        [
            sys.executable,
            "run.py",
            "-m",
            "dataset=npz",
            f"dataset.root={tmp_path}",
            "mining=random_hard,batch_hard",
            "model=mlp,lenet",
            "model.embedding_size=8",
            "logger=jsonl",
            "sampler=pk",
            "sampler.classes_per_batch=4",
            "sampler.images_per_class=4",
            "trainer.epochs=1",
            "trainer.warmup_epochs=0",
            "trainer.progress=log",
            "eval.max_points=50",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["model"], r["mining"]) for r in rows} == {
        (m, s) for m in ("mlp", "lenet") for s in ("random_hard", "batch_hard")
    }
    assert all(r["dataset"] == "npz" and r["error"] == "" for r in rows), rows
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 4
    for job in jobs:  # the plugin's tracker wrote each job's epochs and end
        lines = (job / "tracker.jsonl").read_text().splitlines()
        assert [line.split('"event": ')[1][:6] for line in lines] == ['"epoch', '"end",']
    experiment = TensorBoard(sweep).post("/experiment", {"experimentName": ""})
    domains = {h["name"]: sorted(h.get("domainDiscrete", [])) for h in experiment["hparamInfos"]}
    assert domains["mining.strategy"] == ["batch_hard", "random_hard"]
    assert domains["model.name"] == ["lenet", "mlp"]

    csv_path = tmp_path / "bench.csv"
    proc = _run(
        [
            sys.executable,
            "-m",
            "tripletlab.bench",
            "losses",
            "--sizes",
            "16",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--labels",
            "pk",
            "--memory",
            "off",
            "--csv",
            str(csv_path),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with csv_path.open(newline="") as f:
        timed = {r["strategy"]: r for r in csv.DictReader(f) if r["impl"] == "ours"}
    assert float(timed["random_hard"]["ms_median"]) > 0
    assert "random_hard" in proc.stdout
