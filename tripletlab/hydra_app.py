"""Hydra at the edge: turn a composed config into a run folder and a return value."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, open_dict, read_write

from tripletlab.credentials import install_log_redaction, redact, refuse_config
from tripletlab.distribute import task_is_chief
from tripletlab.errors import ConfigError, TripletLabError
from tripletlab.io_utils import atomic_write_text
from tripletlab.run_folder import RunConfigMismatch, RunFolder, RunFolderBusy, Status
from tripletlab.search import trial_value
from tripletlab.sweep import (
    parallel_jobs,
    parallel_threads,
    register_resolvers,
    sweep_dir,
    update_sweep_summary,
)

log = logging.getLogger("tripletlab")

# ${tripletlab.job_dirname:...} in hydra.sweep.subdir. Registered on import: run.py imports
# this module, and so does every joblib or submitit worker that unpickles the task function.
register_resolvers()


def run_task(cfg: DictConfig) -> float:
    """Train ``cfg`` in Hydra's output folder; return the optimised metric for sweepers.

    Training records a failure in the run folder itself; here it is only presented. A user
    mistake (bad data, a bad value) is printed as one line with no traceback: a single run
    exits 1. In a sweep a failing job, whatever the error, returns NaN (the traceback of an
    unexpected error goes to its run.log) and the sweep goes on; under the Optuna sweeper a
    failed trial instead (:func:`tripletlab.search.trial_value`), and the study goes on.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    # A log line that cannot be written (a full disk) is dropped, not printed as a traceback:
    # the error it causes elsewhere is reported once, as one message.
    logging.raiseExceptions = False
    install_log_redaction()  # also in a launcher's worker process: run.log is redacted
    output_dir = hydra_cfg.runtime.output_dir
    if not gate_job(cfg, hydra_cfg, multirun):
        return trial_value(hydra_cfg, math.nan, "the job's config was refused: see its run.log")
    if multirun:
        _split_threads(cfg, hydra_cfg)
        _name_the_experiment(cfg, hydra_cfg)
    if not task_is_chief(cfg.distribute):
        _log_to_the_terminal_only()

    from tripletlab.training import train  # after _split_threads: it sets OMP_NUM_THREADS

    try:
        value = train(cfg, output_dir, on_claimed=lambda: write_hydra_record(cfg, hydra_cfg))
        return trial_value(hydra_cfg, value) if multirun else value
    except TripletLabError as err:
        if isinstance(err, RunFolderBusy | RunConfigMismatch):
            _log_to_the_terminal_only()  # the folder's run.log belongs to its run
        if multirun:
            return _failed_job(hydra_cfg, str(err))
        _log_to_run_log(logging.ERROR, str(err))  # the terminal gets the one line below
        print(redact(f"error: {err}", "the standard error"), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if multirun:  # the sweep stops here: its summary gets this job's "interrupted" row
            with contextlib.suppress(Exception):
                update_sweep_summary(sweep_dir(hydra_cfg), str(cfg.optimized_metric))
        raise
    except Exception as err:
        if not multirun:
            raise  # a bug: keep the traceback
        log.exception("job failed with an unexpected error: %s", err)
        return trial_value(hydra_cfg, math.nan, f"{type(err).__name__}: {err}")


def _failed_job(hydra_cfg: DictConfig, message: str):
    """A sweep job's failure as one line: the job's own (and NaN) under Hydra's basic
    sweeper; under the Optuna sweeper a failed trial (:mod:`tripletlab.search`), whose line
    the sweeper prints (run.log keeps it too)."""
    value = trial_value(hydra_cfg, math.nan, message)
    if isinstance(value, float):
        log.error("%s", message)
    else:
        _log_to_run_log(logging.ERROR, message)
    return value


def gate_job(cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool) -> bool:
    """The credentials gate on this job's own config (a sweep's values, an Optuna trial's
    parameters, resolved here), before the job writes anything. A refused job of a sweep is
    marked failed with the masked message (False); a single run exits 1."""
    try:
        refuse_config(cfg, hydra_cfg)
    except ConfigError as err:
        if not multirun:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        log.error("%s", err)
        with contextlib.suppress(OSError):
            RunFolder(hydra_cfg.runtime.output_dir).mark(Status.FAILED, str(err))
        return False
    return True


def write_hydra_record(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """``.hydra/hydra.yaml`` and ``overrides.yaml``, as Hydra writes them, beside the
    ``config.yaml`` that training wrote (:func:`tripletlab.run_record.claim`).

    ``conf/config.yaml`` sets ``hydra.output_subdir: null`` so that Hydra does not write
    them before the task starts: a rerun that the folder refuses (another process holds it,
    or its run has another config) or resumes must leave the record of the folder's own run
    as it was.
    """
    from omegaconf import OmegaConf

    folder = RunFolder(hydra_cfg.runtime.output_dir)
    atomic_write_text(folder.hydra_path, OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    atomic_write_text(folder.overrides_path, OmegaConf.to_yaml(hydra_cfg.overrides.task))


def _log_to_run_log(level: int, message: str) -> None:
    """Write ``message`` to run.log only (Hydra's file handler), not to the terminal."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _log_to_the_terminal_only() -> None:
    """A non-chief worker shares the chief's run folder: its lines stay out of run.log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def _name_the_experiment(cfg: DictConfig, hydra_cfg) -> None:
    """A sweep's jobs report to one tracker experiment named by the sweep folder (relative
    to the working directory when inside it), unless ``logger.experiment`` names one."""
    if "experiment" not in cfg.logger or cfg.logger.experiment:
        return
    folder = sweep_dir(hydra_cfg).resolve()
    with contextlib.suppress(ValueError):
        folder = folder.relative_to(Path.cwd().resolve())
    with read_write(cfg), open_dict(cfg):
        cfg.logger.experiment = str(folder)


def _split_threads(cfg: DictConfig, hydra_cfg) -> None:
    """Parallel local jobs (joblib's n_jobs > 1) share the cores instead of each taking all.

    Only when ``trainer.threads`` is 0 (TensorFlow's default); an explicit value is kept.
    """
    n_jobs = parallel_jobs(hydra_cfg.launcher)
    if n_jobs <= 1 or int(cfg.trainer.threads or 0) != 0:
        return
    threads = parallel_threads(n_jobs)
    with read_write(cfg), open_dict(cfg):
        cfg.trainer.threads = threads
    # Before TensorFlow (and its OpenMP / oneDNN pools) is imported in this worker.
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(min(threads, 2))
    log.info("%d parallel jobs: %d TensorFlow thread(s) per job", n_jobs, threads)
