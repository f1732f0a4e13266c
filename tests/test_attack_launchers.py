"""Attacks on "nothing from a file becomes a command" (issue 25, part 2), by variants.

- ``scripts/reality_check.sh`` turns a finished study's ``optimization_results.yaml``
  (``best_params``) into the overrides of the final runs. A tampered file (a sweep folder
  may come from someone else, or be edited) must not add overrides of its own: a value
  with a space, a newline or a tab, a key with ``=``, or a Hydra key (``hydra.launcher.setup``
  is a shell line in the sbatch script) is refused with one ``error:`` line, and nothing of
  that cell is launched. A fake ``sbatch`` on PATH runs the script it is given, and the
  marker file must never appear. The 17 tampered variants are 17 cells of one
  reality_check.sh call (a refused cell is skipped, the next one still checked): a test per
  variant asserts its cell's lines, one more that nothing ran; the legitimate result has a
  call of its own. All of them run in ``make test``.
- ``tripletlab-sweep --resume DIR`` writes DIR as ``hydra.sweep.dir`` in Hydra's override
  grammar: every folder name (quotes, backslashes, ``${...}``, spaces, ``,``) must come back
  as that very folder, never as an interpolation or another folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

MARKER = "PWNED"


def _make_sandbox(root: Path) -> Path:
    """A fake sbatch that runs its script (then fails: nothing is queued) and a fake srun."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\n"
        'cp "$1" "$SANDBOX/script.sh"\n'
        '( cd "$SANDBOX" && bash "$1" ) > "$SANDBOX/script.out" 2>&1\n'
        'echo "fake sbatch: the script ran; nothing is queued" >&2\n'
        "exit 1\n"
    )
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return root


@pytest.fixture
def sandbox(tmp_path):
    return _make_sandbox(tmp_path)


def _reality_check(sandbox: Path, cells: dict[str, object]) -> subprocess.CompletedProcess:
    """reality_check.sh for cells (easy_positive-<memory>: best_params) whose studies are
    done, with ``best_params`` as their results; the final runs go to Slurm (the fake
    sbatch). The cells run in order in one call, as a real protocol's do."""
    out = sandbox / "rc"
    for memory, best_params in cells.items():
        tune = out / "tune" / f"easy_positive-{memory}"
        tune.mkdir(parents=True)
        (tune / ".trials").write_text("1\n")
        (tune / "optimization_results.yaml").write_text(
            yaml.safe_dump({"name": "optuna", "best_params": best_params, "best_value": 0.5})
        )
    env = {
        **os.environ,
        "SANDBOX": str(sandbox),
        "PATH": f"{sandbox / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "RC_TRIALS": "1",
        "RC_SEEDS": "1",
        "RC_MEMORY": " ".join(cells),
        "RC_STRATEGIES": "easy_positive",
        "RC_OVERRIDES": "hydra/launcher=slurm dataset=digits trainer.epochs=1",
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "reality_check.sh"), str(out)],
        cwd=sandbox,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _tampered() -> dict[str, dict]:
    """best_params that would add overrides (here: a shell line in the sbatch script)."""
    setup = f"hydra.launcher.setup=['>{MARKER}']"
    found = {}
    for sep_name, sep in (("space", " "), ("newline", "\n"), ("tab", "\t"), ("CR", "\r")):
        found[f"value, {sep_name}"] = {"mining.margin": f"0.2{sep}{setup}"}
        found[f"key, {sep_name}"] = {f"mining.margin=0.2{sep}{setup}{sep}trainer.epochs": 1}
    found["a Hydra key"] = {"mining.margin": 0.2, "hydra.launcher.setup": f"['>{MARKER}']"}
    found["an added Hydra key"] = {"+hydra.launcher.setup": f"['>{MARKER}']"}
    found["a group of Hydra's"] = {"hydra/launcher": "slurm", "mining.margin": 0.2}
    found["a key with ="] = {f"mining.margin=0.2,{setup}": 1}
    found["a list value"] = {"mining.margin": [f">{MARKER}"]}
    found["an interpolation"] = {"mining.margin": "${oc.env:HOME}"}
    found["a quoted value"] = {"mining.negatives": f"'hard' {setup}"}
    found["a special key"] = {"mining._target_": "os.system"}
    found["not a mapping"] = [setup]
    return found


TAMPERED = _tampered()
# Each variant's cell: easy_positive-<memory>, the memory sizes 0, 64, 128, ...
CELLS = {variant: str(64 * i) for i, variant in enumerate(sorted(TAMPERED))}


@pytest.fixture(scope="module")
def tampered_call(tmp_path_factory):
    """One reality_check.sh call over every tampered variant, one cell each (one summarize
    at the end instead of one per variant)."""
    sandbox = _make_sandbox(tmp_path_factory.mktemp("tampered"))
    proc = _reality_check(sandbox, {CELLS[v]: TAMPERED[v] for v in sorted(TAMPERED)})
    return sandbox, proc


@pytest.mark.e2e
@pytest.mark.parametrize("variant", sorted(TAMPERED))
def test_a_tampered_best_params_adds_no_override(tampered_call, variant):
    """The variant's cell is refused with one error line naming its file, and has no final
    run (each cell's own lines, so that a failure names the variants that got through)."""
    _, proc = tampered_call
    cell = f"easy_positive-{CELLS[variant]}"
    assert f"== final {cell}:" not in proc.stderr, (variant, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    results = f"/tune/{cell}/optimization_results.yaml:"
    assert any(results in line for line in errors), (variant, proc.stderr)


@pytest.mark.e2e
def test_no_tampered_cell_ran_anything(tampered_call):
    """No final run reached sbatch, the marker never appeared, and no traceback."""
    sandbox, proc = tampered_call
    assert not (sandbox / MARKER).exists(), proc.stderr[-2000:]
    assert proc.returncode != 0, proc.stderr[-2000:]  # 2: summarize finds no run
    assert not (sandbox / "script.sh").exists(), proc.stderr[-2000:]  # no final run
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.e2e
def test_a_study_result_reaches_the_final_runs(sandbox):
    """The legitimate values: floats (3 significant digits), strings and bools."""
    best = {"mining.margin": 0.234567, "mining.negatives": "hard", "trainer.learning_rate": 1e-3}
    proc = _reality_check(sandbox, {"0": best})
    assert (sandbox / "script.sh").is_file(), proc.stderr[-3000:]  # the final run reached sbatch
    assert not (sandbox / MARKER).exists()
    launched = [line for line in (proc.stdout + proc.stderr).splitlines() if "#0 :" in line]
    assert launched, proc.stderr[-3000:]
    for override in ("mining.margin=0.235", "mining.negatives=hard", "trainer.learning_rate=0.001"):
        assert override in launched[0].split(), launched[0]


# ------------------------------------------------------ --resume DIR as hydra.sweep.dir
# Pieces of folder names that Hydra's grammar or OmegaConf would read as something else: a
# backslash (an escape only before a quote or at the end), quotes, an interpolation (with
# and without backslashes before it), Hydra's separators, spaces, control characters and a
# byte that is not UTF-8 (os.fsdecode's surrogate).
PIECES = ["\\", "\\\\", "'", '"', "${oc.env:HOME}", "\\${x}", "\\\\${x}", "$", "{", ",", " "]
PIECES += ["=", "[a]", "\t", "\n", "%2F", "\udcff", "é", "\\'", "-"]


def _names() -> list[str]:
    """Generated names: each piece alone, at the end, and next to each other piece."""
    names = [f"/tmp/a{p}b" for p in PIECES] + [f"/tmp/a{p}" for p in PIECES]
    names += [f"/tmp/{p}{q}" for p in PIECES for q in PIECES]
    return names


@pytest.mark.parametrize("name", _names(), ids=ascii)
def test_a_resumed_folder_is_hydra_sweep_dir_as_it_is(name):
    """The override ``tripletlab-sweep --resume DIR`` writes reads back as DIR, resolved."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from tripletlab.cli.sweep import hydra_value

    (override,) = OverridesParser.create().parse_overrides([f"hydra.sweep.dir={hydra_value(name)}"])
    assert override.value() is not None
    assert OmegaConf.create({"dir": override.value()}).dir == name


@pytest.mark.parametrize("piece", ["\\", "${oc.env:HOME}", "\\${oc.env:HOME}", "'"], ids=ascii)
def test_resume_points_hydra_at_the_very_folder(tmp_path, piece):
    """``sweep_arguments(resume=DIR)`` composed by Hydra: hydra.sweep.dir is DIR."""
    from tests.helpers import compose
    from tripletlab.cli.sweep import sweep_arguments

    folder = tmp_path / f"sweep{piece}x"
    folder.mkdir()
    saved = {"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": ["seed=1"]}}}
    (folder / "multirun.yaml").write_text(yaml.safe_dump(saved))
    overrides = sweep_arguments([], resume=folder)
    cfg = compose(overrides, return_hydra_config=True)
    assert cfg.hydra.sweep.dir == str(folder.resolve())
