"""Sweeps: job folder names, the summary callback, failed jobs, parallel threads, resume.

- :func:`job_dirname` names a job's sub-folder from its overrides (``conf/config.yaml`` sets
  ``hydra.sweep.subdir: ${tripletlab.job_dirname:${hydra:job.override_dirname},...}``):
  a ``/`` in a value never nests folders, and a name too long for the file system is
  shortened with a hash that keeps it unique and the same on every rerun (resume).
- :class:`SweepSummary`, a Hydra callback (``hydra.callbacks.sweep_summary``), rebuilds
  ``summary.csv`` / ``.md`` / ``.png`` in the sweep folder each time a job ends, from the
  jobs' summaries (:mod:`tripletlab.run_folder`), under a file lock, so parallel jobs never lose a row. At the
  end of the sweep it prints the table and, if a job failed, one line with the count and
  exits 1.
- :func:`parallel_threads` splits the cores between parallel local jobs.
- :func:`resume_overrides` gives the overrides a sweep folder was made with
  (``tripletlab-sweep --resume DIR`` reruns them into DIR).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("tripletlab")

LOCK_NAME = ".summary.lock"
# Linux allows 255 bytes per path component; keep room for Hydra's and our own suffixes.
MAX_DIRNAME_BYTES = 200
_HASH_CHARS = 10
_SLASHES = {"/": "%2F", "\0": ""}


# --------------------------------------------------------------------- job folder names
def job_dirname(override_dirname: Any, job_num: Any = None) -> str:
    """A safe, stable folder name for a job from Hydra's ``job.override_dirname``.

    ``mining=batch_all,model=lenet`` stays as it is (with Hydra's ``\\`` escapes); a ``/`` in
    a value becomes ``%2F``, so ``dataset.root=/data/x`` is one folder, not three; a name longer
    than :data:`MAX_DIRNAME_BYTES` keeps its start and ends with a hash of the whole name. No
    overrides at all: the job number.
    """
    name = "" if override_dirname is None else str(override_dirname)
    for char, replacement in _SLASHES.items():
        name = name.replace(char, replacement)
    if name in ("", ".", ".."):
        return str(job_num if job_num is not None else 0)
    data = name.encode("utf-8")
    if len(data) > MAX_DIRNAME_BYTES:
        digest = hashlib.sha1(data).hexdigest()[:_HASH_CHARS]
        head = data[: MAX_DIRNAME_BYTES - _HASH_CHARS - 1].decode("utf-8", errors="ignore")
        name = f"{head.rstrip(',')}-{digest}"
    return name


def register_resolvers() -> None:
    """``${tripletlab.job_dirname:...}``, used by ``hydra.sweep.subdir``."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("tripletlab.job_dirname", job_dirname, replace=True)


# ---------------------------------------------------------------------- parallel jobs
def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallel_jobs(launcher_cfg: Any) -> int:
    """How many jobs the launcher runs at once on this machine (joblib's n_jobs; -1: all CPUs,
    -2: all but one...); 1 for launchers without ``n_jobs``."""
    try:
        n = int(launcher_cfg.get("n_jobs") or 1)
    except (AttributeError, TypeError, ValueError):
        return 1
    if n < 0:
        n = cpu_count() + 1 + n
    return max(n, 1)


def parallel_threads(n_jobs: int, cpus: int | None = None) -> int:
    """TensorFlow threads per job when ``n_jobs`` share ``cpus`` cores."""
    return max(1, (cpus or cpu_count()) // max(n_jobs, 1))


# --------------------------------------------------------------------- the summary
@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``folder/.summary.lock`` (blocks until it is free)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def update_sweep_summary(
    sweep_dir: str | os.PathLike, metric: str | None = None, plot: bool = True
) -> tuple[list[dict], str]:
    """Rebuild the sweep folder's summary files from its jobs' run folders; (rows, markdown)."""
    from tripletlab.summarize import collect_rows, default_metric, write_summary

    folder = Path(sweep_dir).resolve()
    with locked(folder):
        rows = collect_rows([folder], relative_to=folder)
        metric = metric or default_metric(rows)
        text = write_summary(rows, folder, metric, title=f"Sweep {folder}", plot=plot)
    return rows, text


def sweep_dir(hydra_node: Any) -> Path:
    """The sweep folder from Hydra's config node (``HydraConfig.get()`` or ``cfg.hydra``)."""
    folder = Path(str(hydra_node.sweep.dir))
    if not folder.is_absolute():
        with contextlib.suppress(Exception):
            folder = Path(str(hydra_node.runtime.cwd)) / folder
    return folder


def _sweep_dir(config: Any) -> Path:
    return sweep_dir(config.hydra)


def _is_multirun(config: Any) -> bool:
    from hydra.types import RunMode

    try:
        return config.hydra.mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001
        return False


def _metric(config: Any) -> str | None:
    try:
        return str(config.optimized_metric)
    except Exception:  # noqa: BLE001
        return None


class SweepSummary(Callback):
    """Keep ``summary.csv`` (``.md``, ``.png``) of a sweep up to date as its jobs end.

    Args:
        exit_on_failure: at the end of the sweep, print ``K of N jobs failed: see
            SWEEP/summary.csv`` and exit 1 when a job did not finish (a collapse is a
            finished run).
        plot: also draw summary.png.
    """

    def __init__(self, exit_on_failure: bool = True, plot: bool = True) -> None:
        self.exit_on_failure = exit_on_failure
        self.plot = plot

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        # Training recorded the job's status (a failure too) in its run folder.
        update_sweep_summary(_sweep_dir(config), _metric(config), plot=self.plot)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        folder = _sweep_dir(config)
        if not folder.is_dir():
            return
        rows, text = update_sweep_summary(folder, _metric(config), plot=self.plot)
        if not rows:
            return
        print(text, end="", flush=True)
        print(f"summary: {folder / 'summary.csv'} (and summary.md, summary.png)", flush=True)
        failed = failures(rows)
        if failed and self.exit_on_failure:
            print(
                f"{len(failed)} of {len(rows)} jobs failed: see {folder / 'summary.csv'}",
                file=sys.stderr,
                flush=True,
            )
            # SystemExit is not an Exception: it passes through Hydra's callback wrapper and
            # its error reporting, so the sweep's exit status is 1.
            sys.exit(1)


def failures(rows: Sequence[dict]) -> list[dict]:
    """Rows of jobs that did not finish (failed, interrupted, still marked running)."""
    from tripletlab.run_folder import FINISHED

    return [r for r in rows if r["status"] not in FINISHED]


# -------------------------------------------------------------------------- resume
def resume_overrides(sweep_dir: str | os.PathLike) -> list[str]:
    """The command-line overrides a sweep folder was made with (from ``multirun.yaml``),
    Hydra's own first, without ``hydra.sweep.dir`` (the caller points it at the folder)."""
    import yaml

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {sweep_dir} is not a sweep folder")
    # Plain YAML, not OmegaConf: an override may hold an interpolation such as ${now:...},
    # which must come back as typed, not resolved.
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    overrides = (
        ((saved.get("hydra") or {}).get("overrides") or {}) if isinstance(saved, dict) else {}
    )
    hydra_overrides = overrides.get("hydra") or []
    task_overrides = overrides.get("task") or []
    out = []
    for o in [*hydra_overrides, *task_overrides]:
        key = str(o).lstrip("+~").split("=", 1)[0]
        if key in ("hydra.sweep.dir", "hydra.mode"):
            continue
        out.append(str(o))
    return out
