"""``tripletlab-train [key=value ...]``: one run; ``tripletlab-train -m ...``: a sweep.

This is Hydra's command line (``python run.py`` in a clone is the same command): overrides
``key=value`` / ``group=option``, ``-m`` for a sweep, ``--cfg job`` to print the config,
``--help``. The config folder is tripletlab's ``conf/`` (:func:`tripletlab.resources.config_dir`);
run and sweep folders go under the current folder's ``outputs/`` (``conf/config.yaml``).

Before Hydra starts, the overrides are composed once (with the first value of each swept key),
so a typo or a bad value ends in one ``error: ...`` line and exit status 1, with no run folder
made. With Hydra's other options (``--cfg``, ``-cn``...), or a sweep that is not a list or a
range (Optuna's ``interval(...)``), Hydra alone checks them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from tripletlab.config import register_configs
from tripletlab.config_reference import user_groups_text
from tripletlab.credentials import refuse_secrets
from tripletlab.errors import StorageError, TripletLabError
from tripletlab.hydra_app import run_task
from tripletlab.io_utils import unwritable_folder
from tripletlab.resources import config_dir

register_configs()
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

    Every argument is searched for a credential first, also those Hydra alone checks, and
    the output folder (``hydra.run.dir``, or ``hydra.sweep.dir`` for a sweep) must be one
    that can be written.
    """
    refuse_secrets((arg.split("=", 1)[0].lstrip("+~"), arg) for arg in args)
    overrides = [a for a in args if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in overrides):
        return  # Hydra's own options, some with values (--cfg job, -cn NAME): Hydra checks
    # Also without -m: a config may set hydra.mode=MULTIRUN (hparams_search=optuna does).
    overrides = first_of_each_sweep(overrides)
    if overrides is None:
        return
    from tripletlab.api import compose

    cfg = compose(overrides, return_hydra_config=True)
    multirun = any(a in MULTIRUN_FLAGS for a in args) or str(cfg.hydra.mode) == "MULTIRUN"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    problem = unwritable_folder(OmegaConf.select(cfg, key))
    if problem:
        raise StorageError(
            f"cannot write the output folder {OmegaConf.select(cfg, key)}: {problem}; "
            f"choose another with {key}=PATH"
        )


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
