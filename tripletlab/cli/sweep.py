"""``tripletlab-sweep [--resume DIR] [--dry-run] [key=value ...]``: the grid, then the table.

    tripletlab-sweep                               model=lenet,small_cnn x
                                                   mining=batch_all,batch_hard,semi_hard
    tripletlab-sweep dataset=digits seed=1,2,3     extra overrides pass through (18 jobs)
    tripletlab-sweep model=lenet                   a model= or mining= override replaces that axis
    tripletlab-sweep hydra/launcher=parallel       jobs in parallel on this machine
    tripletlab-sweep --resume DIR [overrides]      rerun DIR's sweep into DIR: finished jobs
                                                   are skipped, unfinished ones resume; only
                                                   the sweep's own overrides are replayed
    tripletlab-sweep --dry-run ...                 print the command instead of running it
    tripletlab-sweep --resume DIR --trust-endpoints   let the tracking URI or storage that DIR
                                                   names receive your MLFLOW_TRACKING_* /
                                                   PGPASSWORD... (refused without it)

It runs ``tripletlab-train -m <grid> <overrides>``; the sweep folder
(``outputs/multirun/<date>/<time>/``, or ``hydra.sweep.dir=...``) ends with summary.csv,
summary.md and summary.png, and the exit status is 1 when a job did not finish (failed,
interrupted, still running). ``sweep.sh`` in a clone is this command running
``python run.py -m ...``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from tripletlab.cli.common import UsageError, run_cli
from tripletlab.launchers import shell_line
from tripletlab.overrides import override_key

# The default grid, 2 x 3 = 6 jobs: the two small backbones x the three classic mining
# strategies, semi-hard (Schroff et al. 2015) and batch-all and batch-hard (Hermans et al.
# 2017). Not every strategy: easy_positive and distance_weighted join with mining=...
# (docs/sweeps.md's first example; tests/test_docs_facts.py checks the two agree).
DEFAULT_GRID = {
    "model": ("lenet", "small_cnn"),
    "mining": ("batch_all", "batch_hard", "semi_hard"),
}
# Characters a value of hydra.sweep.dir may hold without quotes in Hydra's override grammar.
_PLAIN_PATH = re.compile(r"[\w/.:+-]+", re.ASCII)  # Hydra's grammar: ASCII only, unquoted


def hydra_value(text: str) -> str:
    """``text`` as a value in Hydra's override grammar (quoted when needed) that Hydra and
    OmegaConf read back as ``text``: never as an interpolation (``${...}``) or another path."""
    if _PLAIN_PATH.fullmatch(text):
        return text
    # OmegaConf: ``\${`` is a literal ``${`` (the backslashes before it doubled).
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    # Hydra's quoted value: a backslash escapes only a quote or the end, so double it there.
    text = re.sub(r"(\\*)('|\Z)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{text}'"


def sweep_arguments(
    overrides: Sequence[str],
    resume: str | os.PathLike | None = None,
    trust_endpoints: bool = False,
) -> list[str]:
    """The overrides of ``tripletlab-train -m`` for this sweep.

    Without ``resume``: the default grid's axes that ``overrides`` does not set, then
    ``overrides``. With it: the overrides the sweep folder was made with, the folder as
    ``hydra.sweep.dir``, then ``overrides``; the endpoints replayed from the folder are
    printed on stderr, and one that ``overrides`` does not name must not receive the
    environment's credentials unless ``trust_endpoints``
    (:func:`tripletlab.endpoints.check_replayed_endpoints`).
    """
    from tripletlab.endpoints import check_replayed_endpoints
    from tripletlab.sweep import resume_overrides

    overrides = [str(o) for o in overrides]
    if resume is not None:
        folder = Path(resume).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--resume {folder}: not a folder")
        folder = folder.resolve()
        try:
            saved = resume_overrides(folder)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(f"--resume: {err}") from None
        path = folder / "multirun.yaml"
        shown = check_replayed_endpoints(path, saved, overrides, os.environ, trust_endpoints)
        if shown:
            print(f"replayed from {path}: {', '.join(shown)}", file=sys.stderr, flush=True)
        return [*saved, f"hydra.sweep.dir={hydra_value(str(folder))}", *overrides]
    given = {override_key(o) for o in overrides}
    axes = [f"{key}={','.join(values)}" for key, values in DEFAULT_GRID.items() if key not in given]
    return [*axes, *overrides]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripletlab-sweep",
        description="Train the grid of models x mining strategies (tripletlab-train -m), then "
        "write the sweep's summary.csv. A model= or mining= override replaces that axis.",
        epilog="Options go before the overrides; everything from the first override on is "
        "passed to tripletlab-train -m.",
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="rerun DIR's sweep (its own overrides) into DIR: finished jobs are skipped, "
        "unfinished ones resume from their checkpoints. Only the jobs' overrides and the "
        "launcher's and sweeper's settings are replayed: a multirun.yaml that asks for more "
        "(callbacks, env_set, searchpath, setup commands) is refused",
    )
    parser.add_argument(
        "--trust-endpoints",
        action="store_true",
        help="with --resume: let the endpoints replayed from DIR (tracking URI, Optuna "
        "storage) receive the credentials of your environment (MLFLOW_TRACKING_PASSWORD, "
        "PGPASSWORD...); without it a resume that would send them to an endpoint this "
        "command does not name is refused",
    )
    parser.add_argument(
        "--dry-run", "-n", action="store_true", help="print the command instead of running it"
    )
    # sweep.sh in a clone: run `python SCRIPT -m ...` (run.py) instead of training in-process.
    parser.add_argument("--train-script", help=argparse.SUPPRESS)
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="KEY=VALUE",
        help="overrides for every job, e.g. dataset=digits trainer.epochs=2 seed=1,2,3",
    )
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    sweep = ["-m", *sweep_arguments(args.overrides, args.resume, args.trust_endpoints)]
    if args.train_script:
        command = [sys.executable, args.train_script, *sweep]
    else:
        command = ["tripletlab-train", *sweep]
    if args.dry_run:  # a shell line: every argument checked and quoted (tripletlab.launchers)
        print(shell_line(command))
        return 0
    sys.stdout.flush()
    if args.train_script:
        os.execv(sys.executable, command)  # as `exec python run.py -m ...`: signals go to it
    from tripletlab.cli import train

    return train.main(sweep)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
