"""A failed trial of an Optuna search (``hparams_search=optuna``): one line, and the study goes on.

A sweep job that fails returns NaN to Hydra's basic sweeper (the grid goes on). Hydra's
Optuna sweeper (optuna < 3) cannot take NaN: ``study.tell`` refuses it, and the sweeper's own
handling then calls ``tell`` again with the same NaN, which raises too; two tracebacks, and no
more trials. So a job of an Optuna search returns a :class:`FailedTrial` instead: a value that
is not float-castable. The sweeper's documented path for that runs: the trial is recorded
``FAIL`` in the study, and the sweeper logs ``Failed experiment: <the job's error>``, the one
line for that trial (the job writes it to its run.log only). The job itself did not raise, so
``max_failure_rate`` never stops the study (``conf/hparams_search/optuna.yaml`` sets it to 1.0,
which says so): the search runs its ``n_trials``, and the sweep ends like any sweep (summary,
exit status 1 when a job failed).

When every trial failed and the study has no finished trial at all, the sweeper would end in
Optuna's ``No trials are completed yet`` traceback: the last failed trial ends the search
with one ``error:`` line instead.

:class:`ContinueStudy` (a Hydra callback that ``hparams_search=optuna`` adds) makes a
persistent study (``hydra.sweeper.storage=sqlite:///...``) continue: its ``n_trials``
becomes the study's total, so a rerun runs only the trials still missing.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from tripletlab.errors import TripletLabError

log = logging.getLogger("tripletlab")


class TrialFailed(TripletLabError):
    """A trial's job failed (raised to Hydra's Optuna sweeper, which records it FAIL)."""


def is_optuna_search(hydra_cfg: Any) -> bool:
    """Whether the job runs under Hydra's Optuna sweeper."""
    try:
        return str(hydra_cfg.sweeper.get("_target_") or "").endswith("OptunaSweeper")
    except Exception:  # noqa: BLE001 - no sweeper node: not a search
        return False


class FailedTrial:
    """What a failed job returns to the Optuna sweeper: ``float()`` of it raises
    :class:`TrialFailed` with the job's one-line error. Picklable (parallel launchers)."""

    # Failed trials seen by the sweeper's process in this search (the sweeper calls
    # float() on each job's value there, in order).
    failed_in_this_search = 0

    def __init__(self, message: str, hydra_cfg: Any = None) -> None:
        self.message = message
        self.trials, self.storage, self.study, self.sweep_dir = 0, None, None, None
        if hydra_cfg is not None:
            from tripletlab.sweep import sweep_dir

            sweeper = hydra_cfg.sweeper
            self.trials = int(sweeper.get("n_trials") or 0)
            self.storage = sweeper.get("storage")
            self.study = sweeper.get("study_name")
            self.sweep_dir = str(sweep_dir(hydra_cfg))

    def __float__(self) -> float:
        FailedTrial.failed_in_this_search += 1
        if FailedTrial.failed_in_this_search >= self.trials > 0 and not self._study_has_a_result():
            print(
                f"error: all {self.trials} trial(s) of the search failed, the last with: "
                f"{self.message}; see {Path(self.sweep_dir or '.') / 'summary.csv'}",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(1)  # SystemExit passes the sweeper's and Hydra's error handling
        raise TrialFailed(self.message)

    def _study_has_a_result(self) -> bool:
        """Whether the study holds a finished trial from before (a persistent storage)."""
        if not self.storage:
            return False
        try:
            import optuna

            study = optuna.load_study(study_name=self.study, storage=str(self.storage))
            return bool(study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]))
        except Exception:  # noqa: BLE001 - cannot tell: let the sweeper decide
            return True

    def __repr__(self) -> str:
        return f"FailedTrial({self.message!r})"


def trial_value(hydra_cfg: Any, value: Any, message: str | None = None) -> Any:
    """What a sweep job returns: ``value``, or under the Optuna sweeper, a
    :class:`FailedTrial` for a NaN (a failed job, or a metric that is NaN)."""
    failed = isinstance(value, float) and math.isnan(value)
    if not failed or not is_optuna_search(hydra_cfg):
        return value
    return FailedTrial(message or "the trial's metric is NaN", hydra_cfg)


# ----------------------------------------------- a persistent study that continues
# Trials that will not run again: finished, pruned or failed (a RUNNING one from a killed
# search is left as it is and does not count).
_DONE_STATES = ("COMPLETE", "PRUNED", "FAIL")


def check_storage_versions(optuna_version: str, sqlalchemy_version: str | None) -> None:
    """ConfigError for optuna < 3 with SQLAlchemy >= 2, whose database storage fails inside
    ``create_study`` with a bare AssertionError."""
    from tripletlab.errors import ConfigError

    if sqlalchemy_version is None or int(optuna_version.split(".")[0]) >= 3:
        return
    if int(sqlalchemy_version.split(".")[0]) >= 2:
        raise ConfigError(
            f"optuna {optuna_version}'s database storage does not work with SQLAlchemy "
            f"{sqlalchemy_version}: pip install 'SQLAlchemy>=1.4.24,<2' (pip install -e "
            "'.[optuna]' pins it), or use hydra.sweeper.storage=null"
        )


def sqlite_path(storage: str) -> Path | None:
    """The file of a ``sqlite:///path`` storage URL (relative to the working directory)."""
    prefix = "sqlite:///"
    if not storage.startswith(prefix):
        return None
    path = storage[len(prefix) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def trials_done(storage: str, study_name: str | None) -> int:
    """Trials of the study that will not run again; 0 when there is no such study yet."""
    import optuna

    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
    except Exception:  # noqa: BLE001 - a new database: no study in it yet
        return 0
    if study_name not in names:
        return 0
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = [getattr(optuna.trial.TrialState, s) for s in _DONE_STATES]
    return len(study.get_trials(deepcopy=False, states=states))


class ContinueStudy(Callback):
    """Before Hydra's Optuna sweeper is built: with a ``storage``, check that optuna and
    SQLAlchemy work together, create a sqlite file's folder, and lower ``n_trials`` by the
    trials the study already has (20 done, ``n_trials=30``: 10 more). The plugin alone runs
    ``n_trials`` more on every rerun. A seeded sampler gets ``seed + trials done``, so that
    the new trials are not the first ones again."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import read_write

        from tripletlab.sweep import sweep_dir

        sweeper = config.hydra.sweeper
        storage = sweeper.get("storage")
        if not storage or "n_trials" not in sweeper:
            return
        storage = str(storage)
        import optuna

        try:
            import sqlalchemy

            sqlalchemy_version = sqlalchemy.__version__
        except ImportError:
            sqlalchemy_version = None
        check_storage_versions(optuna.__version__, sqlalchemy_version)
        path = sqlite_path(storage)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # The sweeper writes optimization_results.yaml there even when no trial is left.
        sweep_dir(config.hydra).mkdir(parents=True, exist_ok=True)
        done = trials_done(storage, sweeper.get("study_name"))
        if not done:
            return
        left = max(int(sweeper.n_trials) - done, 0)
        log.info(
            "study %r in %s has %d trial(s): %d more to reach n_trials=%d",
            sweeper.get("study_name"),
            storage,
            done,
            left,
            sweeper.n_trials,
        )
        with read_write(sweeper):
            sweeper.n_trials = left
            seed = sweeper.get("sampler", {}).get("seed")
            if seed is not None:
                # The same seed in a new process would replay the study's first trials.
                sweeper.sampler.seed = int(seed) + done
