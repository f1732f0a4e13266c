"""``tripletlab-train [key=value ...]``: one run; ``tripletlab-train -m ...``: a sweep.

This is Hydra's command line (``python run.py`` in a clone is the same command): overrides
``key=value`` / ``group=option``, ``-m`` for a sweep, ``--cfg job`` to print the config,
``--help``. The config folder is tripletlab's ``conf/`` (:func:`tripletlab.resources.config_dir`);
run and sweep folders go under the current folder's ``outputs/`` (``conf/config.yaml``).

Before Hydra starts, the command line is composed once as Hydra will compose it (the same
argument parser, search path, ``--config-dir`` / ``--config-path`` / ``--config-name``; the
first value of each swept key), so a typo or a bad value ends in one ``error: ...`` line and
exit status 1, with no run folder made. The composed and resolved config, Hydra's settings
included, and every value of every sweep pass the credentials gate
(:mod:`tripletlab.credentials`), also for ``--cfg`` and ``--help``, which print the config.
What the command prints and logs is redacted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from tripletlab.config import register_configs
from tripletlab.config_reference import user_groups_text
from tripletlab.credentials import redacted_output, refuse_config, refuse_secrets
from tripletlab.errors import ConfigError, StorageError, TripletLabError
from tripletlab.hydra_app import run_task
from tripletlab.io_utils import unwritable_folder
from tripletlab.resources import config_dir

try:
    register_configs()  # the schemas, plugins' too: a broken plugin is one line
except TripletLabError as _err:
    sys.exit(f"error: {_err}")
except KeyboardInterrupt:  # Ctrl-C while the plugins import: as report_errors says it
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)
# --help lists the groups a user picks (conf/config.yaml's hydra.help.template).
OmegaConf.register_new_resolver("tripletlab.config_groups", user_groups_text, replace=True)

MULTIRUN_FLAGS = ("-m", "--multirun")


def task(cfg: DictConfig) -> float:
    """Hydra's task: train ``cfg`` into Hydra's output folder; the optimised metric."""
    return run_task(cfg)


# `task` stays importable by name: the joblib and submitit launchers pickle it by reference.
hydra_main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(
    task
)


def check_overrides(args: Sequence[str]) -> None:
    """Compose the config the arguments ask for; ConfigError if it fails (see the docstring).

    Every argument, every value of every sweep (resolved: ``${oc.env:...}``) and the composed
    config are searched for a credential first, and the output folder (``hydra.run.dir``, or
    ``hydra.sweep.dir`` for a sweep) must be one that can be written. A command that only
    prints (``--cfg``, ``--help``...) is gated, and otherwise left to Hydra.
    """
    refuse_secrets((arg.split("=", 1)[0].lstrip("+~"), arg) for arg in args)
    parsed = _hydra_arguments(args)
    if parsed is None:
        return  # Hydra's own usage error: Hydra reports it
    refuse_secrets(_swept_values(parsed.overrides))
    runs = not any(
        getattr(parsed, name)
        for name in ("cfg", "help", "hydra_help", "info", "shell_completion", "experimental_rerun")
    )
    try:
        cfg, multirun = compose_command_line(parsed)
    except ConfigError:
        if runs:
            raise
        return  # what does not compose is not printed: Hydra says why
    refuse_config(cfg)  # Hydra's node included: launcher, sweeper, search path...
    if runs:  # the other options of a swept group: their files' contents, not their names
        params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
        searched = [f"{k}={v}" for k, v in params.items() if isinstance(v, str)]
        for variant in other_group_choices(parsed.overrides, searched):
            other = argparse.Namespace(**{**vars(parsed), "overrides": variant})
            try:
                other_cfg = compose_command_line(other)[0]
            except ConfigError:
                continue  # its jobs fail to compose in Hydra too, before writing anything
            refuse_config(other_cfg)
    if not runs:
        return
    from omegaconf.errors import OmegaConfBaseException

    from tripletlab.api import _hydra_message
    from tripletlab.config import validate

    try:
        validate(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    except OmegaConfBaseException as exc:  # ${oc.env:UNSET}: an interpolation that fails
        where = getattr(exc, "full_key", None) or "the config"
        raise ConfigError(f"cannot resolve {where}: {_hydra_message(exc)}") from None
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    problem = unwritable_folder(OmegaConf.select(cfg, key))
    if problem:
        raise StorageError(
            f"cannot write the output folder {OmegaConf.select(cfg, key)}: {problem}; "
            f"choose another with {key}=PATH"
        )
    swept = [v for k, v in _swept_values(parsed.overrides) if k.lstrip("+~") == "hydra.job.name"]
    problem = _log_file_name_problem(cfg, swept)
    if problem:
        raise ConfigError(f"hydra.job.name: {problem}")


# The longest file name (bytes) of the usual file systems (ext4, XFS, Btrfs, APFS, NTFS).
_NAME_MAX = 255


def _log_file_name_problem(cfg: DictConfig, swept: Sequence[str] = ()) -> str | None:
    """Why Hydra could not open a job's log file, which a file handler of
    ``hydra.job_logging`` names after ``hydra.job.name`` (``<run folder>/<name>.log``): a
    path separator in the name (a folder that does not exist) or a name too long for a
    file. ``swept``: the other names of a sweep of it. None when no handler uses the name
    (``hydra/job_logging=disabled``)."""
    handlers = OmegaConf.to_container(
        OmegaConf.select(cfg, "hydra.job_logging.handlers") or OmegaConf.create(), resolve=False
    )
    filenames = [str(h.get("filename", "")) for h in handlers.values() if isinstance(h, dict)]
    if not any(re.search(r"hydra[.:]\s*job\.name", f) for f in filenames):  # ${hydra:job.name}
        return None
    composed = OmegaConf.select(cfg, "hydra.job.name", throw_on_resolution_failure=False)
    for name in (str(composed), *swept):
        for sep in sorted({"/", os.sep, os.altsep or "/"}):
            if sep in name:
                return (
                    f"the job's name ({name}) names its log file ({name}.log in the run "
                    f"folder), which cannot hold {sep!r}; choose a name without it"
                )
        if len(os.fsencode(f"{name}.log")) > _NAME_MAX:
            return (
                f"the job's name names its log file (<name>.log in the run folder), so it "
                f"may be at most {_NAME_MAX - len('.log')} bytes long; choose a shorter name"
            )
    return None


def _hydra_arguments(args: Sequence[str]) -> Any:
    """The arguments as Hydra's own parser reads them; None if it refuses them."""
    from hydra._internal.utils import get_args_parser

    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return get_args_parser().parse_args(list(args))
        except SystemExit:  # --version, or a usage error: Hydra prints it again
            return None


def _swept_values(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """(key, value) of every value of every list or range sweep, interpolations resolved
    where they can be (the first value alone is composed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - a syntax error: composing reports it
        return []
    out = []
    for o in parsed:
        if not o.is_sweep_override():
            continue
        with contextlib.suppress(Exception):  # not enumerable (interval): its text was checked
            for value in o.sweep_iterator():
                text = getattr(value, "text", value)  # a quoted value: its text
                out.append((o.get_key_element(), _resolved(str(text))))
    return out


def _resolved(value: str) -> str:
    try:
        return str(OmegaConf.create({"v": value}).v)
    except Exception:  # noqa: BLE001 - an interpolation of another key: checked composed
        return value


def compose_command_line(parsed: Any) -> tuple[DictConfig, bool]:
    """(the config with Hydra's node, whether it is a sweep) that ``hydra_main`` will compose
    for Hydra's parsed arguments: the same search path (``--config-dir`` first), config
    name and mode. A sweep is composed with the first value of each list or range sweep; a
    sweep Hydra alone enumerates (Optuna's ``interval(...)``) is left out, as Hydra's own
    sweep composition leaves it. ConfigError when it does not compose."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import (
        create_automatic_config_search_path,
        detect_calling_file_or_module_from_task_function,
    )
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from tripletlab.api import _hydra_message
    from tripletlab.compose_errors import explain_compose_error

    config_name = parsed.config_name or "config"
    search_path = create_automatic_config_search_path(
        *detect_calling_file_or_module_from_task_function(task),
        parsed.config_path or str(config_dir()),
    )
    if parsed.config_dir is not None:
        folder = os.path.abspath(parsed.config_dir)
        if not os.path.isdir(folder):
            raise ConfigError(f"--config-dir {folder}: not a folder")
        search_path.prepend(
            provider="command-line",
            path=f"file://{folder}",
            anchor=SearchPathQuery(provider="schema"),
        )
    overrides = list(parsed.overrides)
    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)
        mode = hydra.get_mode(config_name=config_name, overrides=overrides)
        multirun = bool(parsed.multirun) or mode == RunMode.MULTIRUN
        first = first_of_each_sweep(overrides)
        cfg = hydra.compose_config(
            config_name=config_name,
            overrides=overrides if first is None else first,
            run_mode=RunMode.MULTIRUN if first is None else RunMode.RUN,
            with_log_configuration=False,
        )
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's and OmegaConf's errors: a user's mistake
        text = explain_compose_error(exc) or _hydra_message(exc)
        raise ConfigError(f"cannot compose the config: {text}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg, multirun


def other_group_choices(overrides: Sequence[str], searched: Sequence[str] = ()) -> list[list[str]]:
    """The command line once for each value but the first of each list sweep of a config
    group (``experiment=a,b``: ``b``), the other sweeps at their first value: the config a
    later job composes, whose file may hold a credential. ``searched``: an Optuna search
    space (``experiment=choice(a,b)``), each of its values. A sweep of a key with a "." or
    of numbers (``seed=1,2,3``) is no group: its values are checked as text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    first = first_of_each_sweep(list(overrides))
    try:
        parser = OverridesParser.create()
        parsed = parser.parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - a syntax error: composing reports it
        return []
    if first is None:
        return []
    out = []
    for i, o in enumerate(parsed):
        key = o.get_key_element()
        param = key.lstrip("+~").removeprefix("hydra.sweeper.params.")
        if not o.is_sweep_override() or "." in param:
            continue
        if param != key.lstrip("+~"):  # hydra.sweeper.params.experiment=choice(a,b)
            out += [[*first, f"{param}={value}"] for value in _group_values(o)]
            continue
        for value in _group_values(o)[1:]:
            out.append([*first[:i], f"{key}={value}", *first[i + 1 :]])
    for line in searched:
        with contextlib.suppress(Exception):  # not an override: the sweeper reports it
            (o,) = parser.parse_overrides([line])
            if o.is_sweep_override() and "." not in o.get_key_element():
                out += [[*first, f"{o.get_key_element()}={v}"] for v in _group_values(o)]
    return out


def _group_values(override: Any) -> list[str]:
    """The values of a list sweep that may name config options (not numbers)."""
    try:
        values = list(override.sweep_string_iterator())
    except Exception:  # noqa: BLE001 - not enumerable (interval, glob)
        return []
    return [v for v in values if not re.fullmatch(r"[-+0-9.e]+", v)]


def first_of_each_sweep(overrides: list[str]) -> list[str] | None:
    """``model=lenet,small_cnn`` -> ``model=lenet``; None when a sweep is not a list or a
    range (``interval(...)`` for Optuna, ``glob(...)``): those are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a syntax error: composing the lines as given reports it
        return overrides
    out = []
    enumerable = (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP, ValueType.RANGE_SWEEP)
    for o in parsed:
        if not o.is_sweep_override():
            out.append(o.input_line)
            continue
        if o.value_type not in enumerable:
            return None
        first = next(iter(o.sweep_string_iterator()), None)
        if first is None:
            return None
        out.append(f"{o.get_key_element()}={first}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run Hydra's command line on ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    with redacted_output():  # what Hydra, the jobs and the summary print or log
        try:
            check_overrides(args)
        except TripletLabError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        saved = sys.argv
        sys.argv = [saved[0] if saved else "tripletlab-train", *args]
        try:
            hydra_main()
        except KeyboardInterrupt:
            # The run folder already says "interrupted"; rerunning the command resumes it.
            print("error: interrupted; rerun the same command to resume", file=sys.stderr)
            return 130
        finally:
            sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
