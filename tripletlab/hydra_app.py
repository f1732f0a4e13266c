"""Hydra at the edge: turn a composed config into a run folder and a return value."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys

from omegaconf import DictConfig, open_dict, read_write

from tripletlab.distribute import task_is_chief
from tripletlab.errors import TripletLabError
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
    unexpected error goes to its run.log) and the sweep goes on.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir = hydra_cfg.runtime.output_dir
    if multirun:
        _split_threads(cfg, hydra_cfg)
    if not task_is_chief(cfg.distribute):
        _log_to_the_terminal_only()

    from tripletlab.training import train  # after _split_threads: it sets OMP_NUM_THREADS

    try:
        return train(cfg, output_dir)
    except TripletLabError as err:
        log.error("%s", err)
        if multirun:
            return math.nan
        print(f"error: {err}", file=sys.stderr)
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
        return math.nan


def _log_to_the_terminal_only() -> None:
    """A non-chief worker shares the chief's run folder: its lines stay out of run.log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


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
