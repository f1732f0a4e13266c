"""Nothing from a file or a launcher value becomes a command (tripletlab.launchers).

Every string key of the Slurm launcher, enumerated from Hydra's launcher schema and from the
parameters of submitit's sbatch writer (so a new key is covered), is driven with values
that would run ``touch PWNED`` if they reached the shell unquoted: a newline, ``;``,
``$(...)``, backticks, ``&&``, a pipe, quotes, NUL and other control characters. A fake
``sbatch`` on PATH runs the script it is given (in ``tmp_path``), and a fake ``srun`` records
its arguments. A value with a control character is refused with one message naming the key;
any other value reaches sbatch or srun as one quoted word, equal to what was given, and the
marker is never created. Both for a fresh sweep's launcher and for a ``--resume`` of a
tampered ``multirun.yaml``.

``make test`` runs every key and payload in process (the launcher as Hydra calls it), and the
real commands (``sweep.sh --resume``, ``run.py -m``) with one refused and one quoted payload
each; ``make test-slow`` adds the commands with ``$(...)``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import os
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, compose
from tripletlab.launchers import COMMAND_KEYS, CheckLauncher
from tripletlab.sweep import RESUMABLE_LAUNCHER_KEYS

submitit_config = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.config")
submitit_slurm = pytest.importorskip("submitit.slurm.slurm")
submitit_launcher = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.submitit_launcher")

MARKER = "PWNED"
# Values a shell would run `touch PWNED` from, unquoted. The first group has no control
# character: it must arrive quoted. The second is refused.
QUOTED = {
    "semicolon": f"x; touch {MARKER}",
    "command substitution": f"$(touch {MARKER})",
    "backticks": f"`touch {MARKER}`",
    "and": f"x && touch {MARKER}",
    "pipe": f"x | touch {MARKER}",
    "single quote": f"x' ; touch {MARKER} ; '",
    "double quote": f'x" ; touch {MARKER} ; "',
    "comment": f"x # ; touch {MARKER}",
}
REFUSED = {
    "newline": f"x\ntouch {MARKER}",
    "newline and comment": f"x\ntouch {MARKER} #",
    "carriage return": f"x\rtouch {MARKER}",
    "NUL": f"x\x00\ntouch {MARKER}",
    "vertical tab": f"x\x0btouch {MARKER}",
    "escape": f"x\x1b]0;touch {MARKER}\x07",
    "DEL": f"x\x7f; touch {MARKER}",
    "C1 next line": f"x\x85touch {MARKER}",
    "line separator": f"x\u2028touch {MARKER}",
}
PRESETS = ("slurm", "slurm_multinode")


def _shape(annotation) -> str | None:
    """'str', 'list' or 'dict' for an annotation that can hold strings; None otherwise."""
    origin = typing.get_origin(annotation)
    if annotation is str:
        return "str"
    if (
        origin in (list, tuple, typing.Sequence, typing.Iterable)
        or origin is not None
        and (getattr(origin, "__name__", "") in ("Iterable", "Sequence", "list"))
    ):
        return "list"
    if origin is dict:
        return "dict"
    if origin is typing.Union:
        shapes = {_shape(a) for a in typing.get_args(annotation)} - {None}
        return "str" if "str" in shapes else next(iter(shapes), None)
    return None


def string_keys() -> dict[str, str]:
    """Every launcher key whose value can hold a string, and its shape: the fields of Hydra's
    SlurmQueueConf and the parameters of submitit's sbatch writer (reachable as
    ``+hydra.launcher.KEY``), by their types."""
    keys = {}
    for field in dataclasses.fields(submitit_config.SlurmQueueConf):
        shape = _shape(field.type)
        if shape and not field.name.startswith("_"):
            keys[field.name] = shape
    hints = typing.get_type_hints(submitit_slurm._make_sbatch_string)
    for name in inspect.signature(submitit_slurm._make_sbatch_string).parameters:
        if name in ("command", "folder", "map_count") or name not in hints:
            continue
        shape = _shape(hints[name])
        if shape:
            keys.setdefault(name, shape)
    return keys


KEYS = string_keys()


def test_the_keys_are_enumerated_from_the_schemas():
    """The enumeration finds the keys the issue names and the writer's own extras."""
    expected = {"comment": "str", "partition": "str", "account": "str", "qos": "str"}
    expected |= {"name": "str", "setup": "list", "additional_parameters": "dict"}
    expected |= {"srun_args": "list", "teardown": "list", "mail_user": "str", "wckey": "str"}
    assert expected.items() <= KEYS.items()
    assert "timeout_min" not in KEYS and "nodes" not in KEYS  # ints


# ------------------------------------------------------------------------ the sandbox
@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A fake sbatch that runs its script in tmp_path (then fails: nothing is queued), and a
    fake srun that records its arguments, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        "#!/bin/bash\n"
        'cp "$1" "$SANDBOX/script.sh"\n'
        '( cd "$SANDBOX" && HOME="$SANDBOX" bash "$1" ) > "$SANDBOX/script.out" 2>&1\n'
        'echo "fake sbatch: the script ran; nothing is queued" >&2\n'
        "exit 1\n"
    )
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/bash\nprintf \'%s\\0\' "$@" > "$SANDBOX/srun.args"\n')
    for tool in (sbatch, srun):
        tool.chmod(0o755)
    monkeypatch.setenv("SANDBOX", str(tmp_path))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@functools.cache
def _launcher_node(overrides: tuple[str, ...]) -> dict:
    """The launcher's config as composed by Hydra (once per set of overrides), unresolved."""
    from omegaconf import OmegaConf

    cfg = compose(list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def _hydra_config(sandbox: Path, overrides=()):
    """The parts of the composed config a launcher reads: its own node, the sweep folder (in
    the sandbox) and the job name its interpolations use."""
    from omegaconf import OmegaConf

    launcher = copy.deepcopy(_launcher_node(tuple(overrides)))
    hydra = {"launcher": launcher, "sweep": {"dir": str(sandbox / "sweep")}, "job": {"name": "run"}}
    return OmegaConf.create({"hydra": hydra})


def _launch(cfg) -> None:
    """What Hydra does with the composed config: the sweep-start check, then the launcher."""
    from hydra._internal.callbacks import Callbacks
    from hydra.types import HydraContext
    from omegaconf import OmegaConf

    CheckLauncher().on_multirun_start(cfg)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    launcher = submitit_launcher.SlurmLauncher(**params)
    context = HydraContext(config_loader=None, callbacks=Callbacks())
    launcher.setup(hydra_context=context, task_function=print, config=cfg)
    launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)


def _set(cfg, key: str, shape: str, value: str, as_flag_name: bool = False) -> None:
    from omegaconf import open_dict

    with open_dict(cfg), open_dict(cfg.hydra.launcher):
        if shape == "str":
            cfg.hydra.launcher[key] = value
        elif shape == "list":
            cfg.hydra.launcher[key] = [value]
        elif as_flag_name:
            cfg.hydra.launcher[key] = {value: "x"}
        else:
            cfg.hydra.launcher[key] = {"mail-user": value}


def _sbatch_values(script: str) -> list[str]:
    """The values of the script's #SBATCH lines, unquoted as a POSIX shell (and Slurm's
    #SBATCH parser) reads them."""
    values = []
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            (word,) = shlex.split(line[len("#SBATCH ") :])
            values.append(word.split("=", 1)[1] if "=" in word else word)
    return values


def _assert_refused(sandbox: Path, capsys, run, key: str, payload: str = "") -> None:
    capsys.readouterr()  # what earlier submissions printed
    with pytest.raises(SystemExit) as exit_:
        run()
    assert exit_.value.code == 1, payload
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (payload, err)
    assert f"hydra.launcher.{key}" in lines[0] and "nothing was submitted" in lines[0], payload
    assert not (sandbox / "script.sh").exists(), payload  # sbatch never ran
    assert not (sandbox / MARKER).exists(), payload


def _assert_quoted(sandbox: Path, run, values: dict[str, str]) -> None:
    """``run`` submitted; sbatch ran the script, and each key's value arrived as given."""
    with pytest.raises(Exception, match="fake sbatch: the script ran"):
        run()
    assert (sandbox / "srun.args").is_file(), (sandbox / "script.out").read_text()
    script = (sandbox / "script.sh").read_text()
    assert not (sandbox / MARKER).exists(), script
    srun_args = (sandbox / "srun.args").read_bytes().decode().split("\0")[:-1]
    sbatch_values = _sbatch_values(script)
    for key, value in values.items():
        if key == "srun_args":
            assert value in srun_args, key  # one argument, as given
        elif key == "submitit_folder":  # the job folder, the last argument of srun
            assert srun_args[-1] == str(sandbox / value), key
        else:
            assert value in sbatch_values, key


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("key", sorted(KEYS))
def test_a_control_character_in_any_key_is_refused(sandbox, capsys, preset, key):
    """One message naming the key, and sbatch never runs; for setup's shell lines too."""
    for payload, value in REFUSED.items():
        cfg = _hydra_config(sandbox, [f"hydra/launcher={preset}"])
        _set(cfg, key, KEYS[key], value)
        _assert_refused(sandbox, capsys, functools.partial(_launch, cfg), key, payload)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("payload", sorted(QUOTED))
@pytest.mark.parametrize("key", sorted(k for k, shape in KEYS.items() if shape == "dict"))
def test_a_flag_name_must_be_plain(sandbox, capsys, preset, key, payload):
    """additional_parameters' keys are written unquoted as sbatch flags."""
    cfg = _hydra_config(sandbox, [f"hydra/launcher={preset}"])
    _set(cfg, key, "dict", QUOTED[payload], as_flag_name=True)
    _assert_refused(sandbox, capsys, functools.partial(_launch, cfg), key, payload)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("payload", sorted(QUOTED))
def test_every_other_value_reaches_sbatch_quoted(sandbox, preset, payload):
    """Every string key at once holds the payload; the script runs, and the marker does not.
    setup / teardown are shell lines by design (the user's own ``module load ...``): they
    are only checked for control characters, and --resume never replays them (below)."""
    cfg = _hydra_config(sandbox, [f"hydra/launcher={preset}"])
    value = QUOTED[payload]
    values = {}
    for key, shape in KEYS.items():
        if key not in COMMAND_KEYS:
            _set(cfg, key, shape, value)
            values[key] = value
    _assert_quoted(sandbox, functools.partial(_launch, cfg), values)


@pytest.mark.parametrize(
    "line", ["~hydra.callbacks.launcher_check", "hydra.callbacks={}", "hydra.callbacks=null"]
)
def test_resume_never_drops_the_check(sandbox, line):
    """The check is a sweep callback: a folder whose overrides remove it is refused."""
    from tripletlab.sweep import UntrustedSweep, resume_overrides

    folder = _tampered_folder(sandbox / "old", [line])
    with pytest.raises(UntrustedSweep, match=re.escape(line)):
        resume_overrides(folder)


# ----------------------------------------------------------------- --resume of a folder
def _override(key: str, shape: str, value: str) -> str:
    """``hydra.launcher.KEY=VALUE`` in Hydra's override grammar (``+`` for a key that is
    not in the launcher's schema)."""
    from tripletlab.cli.sweep import hydra_value

    if shape == "str":
        line = f"hydra.launcher.{key}={hydra_value(value)}"
    elif shape == "list":
        line = f"hydra.launcher.{key}=[{hydra_value(value)}]"
    else:
        line = f"hydra.launcher.{key}={{mail-user: {hydra_value(value)}}}"
    if key not in submitit_config.SlurmQueueConf.__dataclass_fields__:
        line = "+" + line
    return line


def _tampered_folder(folder: Path, lines: list[str]) -> Path:
    """A sweep folder whose multirun.yaml's Hydra overrides hold ``lines``."""
    saved = {
        "hydra": {
            "overrides": {
                "hydra": ["hydra.mode=MULTIRUN", "hydra/launcher=slurm", *lines],
                "task": ["dataset=digits", "seed=1"],
            }
        }
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "multirun.yaml").write_text(yaml.safe_dump(saved))
    return folder


@pytest.mark.parametrize("key", sorted(KEYS))
def test_resume_of_a_tampered_key_runs_nothing(sandbox, capsys, key):
    """Each key, with each payload: refused by the resume (not a sweep's own setting),
    refused by the check (a control character), or replayed as the very value (quoted on
    its way to sbatch: the next test)."""
    from tripletlab.sweep import UntrustedSweep, resume_overrides

    shape = KEYS[key]
    for payload, value in (QUOTED | REFUSED).items():
        folder = _tampered_folder(sandbox / "old", [_override(key, shape, value)])
        try:
            overrides = resume_overrides(folder)
        except UntrustedSweep as err:
            assert f"hydra.launcher.{key}" in str(err), payload
            assert key in COMMAND_KEYS or shape != "str" or key not in RESUMABLE_LAUNCHER_KEYS
            continue
        assert shape == "str" and key in RESUMABLE_LAUNCHER_KEYS, payload
        cfg = _resumed_config(sandbox, overrides)
        assert cfg.hydra.launcher[key] == value
        if payload in REFUSED:
            _assert_refused(sandbox, capsys, functools.partial(_launch, cfg), key, payload)


@pytest.mark.parametrize("payload", sorted(QUOTED))
def test_resume_replays_launcher_values_quoted(sandbox, payload):
    """Every replayable launcher key of a tampered folder at once: sbatch runs the script,
    each value arrives as given, and the marker is never created."""
    from tripletlab.sweep import resume_overrides

    value = QUOTED[payload]
    keys = sorted(k for k, shape in KEYS.items() if shape == "str" and k in RESUMABLE_LAUNCHER_KEYS)
    assert {"comment", "partition", "account", "qos", "name"} <= set(keys)
    folder = _tampered_folder(sandbox / "old", [_override(k, "str", value) for k in keys])
    cfg = _resumed_config(sandbox, resume_overrides(folder))
    _assert_quoted(sandbox, functools.partial(_launch, cfg), {k: value for k in keys})


def _resumed_config(sandbox: Path, overrides: list[str]):
    """The config Hydra composes from the replayed overrides: the preset composed once, and
    the launcher's value parsed by Hydra's own override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    launcher = [o for o in overrides if o.startswith("hydra.launcher.")]
    assert sorted(set(overrides) - set(launcher)) == [
        "dataset=digits",
        "hydra/launcher=slurm",
        "seed=1",
    ]
    cfg = _hydra_config(sandbox, ["hydra/launcher=slurm", "dataset=digits", "seed=1"])
    for override in OverridesParser.create().parse_overrides(launcher):
        key = override.key_or_group[len("hydra.launcher.") :]
        _set(cfg, key, "str", override.value())
    return cfg


# ------------------------------------------------------------------ the real commands
# Each command, a fresh process each: a refused payload and a quoted one in `make test`, a
# second quoted one in `make test-slow`.
COMMAND_PAYLOADS = [
    "newline and comment",
    "semicolon",
    pytest.param("command substitution", marks=pytest.mark.slow),
]


def _env(sandbox: Path) -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.mark.e2e
@pytest.mark.parametrize("payload", COMMAND_PAYLOADS)
def test_sweep_sh_resume_of_a_tampered_comment_runs_nothing(sandbox, payload):
    """``./sweep.sh --resume DIR``, the issue's probe: the comment's line never runs."""
    value = (QUOTED | REFUSED)[payload]
    folder = _tampered_folder(sandbox / "old", [_override("comment", "str", value)])
    proc = subprocess.run(
        ["bash", str(ROOT / "sweep.sh"), "--resume", str(folder), "trainer.epochs=1"],
        cwd=sandbox,
        env=_env(sandbox),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (sandbox / MARKER).exists()
    if payload in REFUSED:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "hydra.launcher.comment" in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr and not (sandbox / "script.sh").exists()
    else:  # quoted: sbatch ran the script, which ran srun, and the comment stayed a value
        assert (sandbox / "srun.args").is_file(), proc.stderr[-2000:]
        assert value in _sbatch_values((sandbox / "script.sh").read_text())


@pytest.mark.e2e
@pytest.mark.parametrize("payload", COMMAND_PAYLOADS)
def test_a_fresh_sweep_with_a_bad_comment_runs_nothing(sandbox, payload):
    """``python run.py -m hydra/launcher=slurm hydra.launcher.comment=...`` as typed."""
    from tripletlab.cli.sweep import hydra_value

    value = (QUOTED | REFUSED)[payload]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            "hydra/launcher=slurm",
            f"hydra.launcher.comment={hydra_value(value)}",
            "dataset=digits",
            f"hydra.sweep.dir={sandbox / 'sweep'}",
        ],
        cwd=sandbox,
        env=_env(sandbox),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (sandbox / MARKER).exists()
    if payload in REFUSED:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "hydra.launcher.comment" in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr and not (sandbox / "script.sh").exists()
    else:
        assert (sandbox / "srun.args").is_file(), proc.stderr[-2000:]
        assert value in _sbatch_values((sandbox / "script.sh").read_text())
