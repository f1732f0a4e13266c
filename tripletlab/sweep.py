"""Sweeps: job folder names, the summary callback, failed jobs, parallel threads, resume.

- :func:`job_dirname` names a job's sub-folder from its overrides (``conf/config.yaml`` sets
  ``hydra.sweep.subdir: ${tripletlab.job_dirname:${hydra:job.override_dirname},...}``):
  a ``/`` in a value never nests folders, and a name too long for the file system is
  shortened with a hash that keeps it unique and the same on every rerun (resume).
- :class:`SweepSummary`, a Hydra callback (``hydra.callbacks.sweep_summary``), rebuilds
  ``summary.csv`` / ``.md`` / ``_stats.csv`` / ``.png`` and the TensorBoard HParams experiment
  (:func:`tripletlab.tracking.tensorboard.write_sweep_experiment`) in the sweep folder each time a job
  ends, from the jobs' summaries (:mod:`tripletlab.run_folder`), under a lock file with a
  lease (:mod:`tripletlab.lease_lock`: any shared file system; a job killed on another host
  blocks the others for at most a lease), so parallel jobs never lose a row. At the end of
  the sweep it prints the table and, if a job did not finish (failed, interrupted, still
  marked running), one line with the counts and exits 1.
- Optuna searches (a failed trial, a persistent study that continues): :mod:`tripletlab.search`.
- :func:`parallel_threads` splits the cores between parallel local jobs.
- :func:`resume_overrides` gives the overrides a sweep folder was made with
  (``tripletlab-sweep --resume DIR`` reruns them into DIR): only the sweep's own, and
  :class:`UntrustedSweep` if its ``multirun.yaml`` asks for more (a folder may be someone
  else's).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from tripletlab.credentials import redact
from tripletlab.errors import TripletLabError
from tripletlab.io_utils import redact_file

log = logging.getLogger("tripletlab")

LOCK_NAME = ".summary.lease"
# A summary rebuild takes seconds; its holder touches the lock every lease / 4 seconds. The
# wait is long enough for many jobs that end at once to queue.
LOCK_LEASE_SECONDS = 60.0
LOCK_TIMEOUT_SECONDS = 600.0
# Linux allows 255 bytes per path component; keep room for Hydra's and our own suffixes.
MAX_DIRNAME_BYTES = 200
_HASH_CHARS = 10
_SLASHES = {"/": "%2F", "\0": ""}
# Files of a sweep folder that Hydra's sweepers write themselves.
HYDRA_WRITES = ("multirun.yaml", "optimization_results.yaml")


# --------------------------------------------------------------------- job folder names
def job_dirname(override_dirname: Any, job_num: Any = None) -> str:
    """A safe, stable folder name for a job from Hydra's ``job.override_dirname``.

    ``mining=batch_all,model=lenet`` stays as it is (with Hydra's ``\\`` escapes); a ``/`` in
    a value becomes ``%2F``, so ``dataset.root=/data/x`` is one folder, not three; a name longer
    than :data:`MAX_DIRNAME_BYTES` keeps its start and ends with a hash of the whole name. No
    overrides at all: the job number.
    """
    name = "" if override_dirname is None else str(override_dirname)
    # A credential never names a folder; each override alone, so that masking one value
    # cannot swallow the next ("," ends no URI) and two jobs keep two names.
    items = re.split(r"(?<!\\),", name)
    name = ",".join(redact(item, "a sweep job's folder name") for item in items)
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
def locked(
    folder: Path, lease: float = LOCK_LEASE_SECONDS, timeout: float = LOCK_TIMEOUT_SECONDS
) -> Iterator[None]:
    """An exclusive lock on ``folder/.summary.lease`` (:class:`tripletlab.lease_lock.LeaseLock`).

    A lock file with a lease rather than ``flock``: it works on every shared file system,
    and a job killed on another host (whose pid cannot be checked) frees it ``lease``
    seconds after its last heartbeat. The wait ends after ``timeout`` seconds with a
    :class:`~tripletlab.lease_lock.LockTimeout` that names the holder.
    """
    from tripletlab.lease_lock import LeaseLock

    folder.mkdir(parents=True, exist_ok=True)
    with LeaseLock(folder / LOCK_NAME, lease=lease, timeout=timeout):
        yield


def update_sweep_summary(
    sweep_dir: str | os.PathLike,
    metric: str | None = None,
    plot: bool = True,
    lock_lease: float = LOCK_LEASE_SECONDS,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
) -> tuple[Any, str]:
    """Rebuild the sweep folder's summary files from its jobs' run folders; (rows, markdown)
    with ``rows`` a DataFrame (:func:`tripletlab.summarize.collect_rows`). Under the
    folder's lock (:func:`locked`): LockTimeout if it stays held ``lock_timeout`` seconds."""
    from tripletlab.summarize import collect_rows, default_metric, write_summary

    folder = Path(sweep_dir).resolve()
    with locked(folder, lease=lock_lease, timeout=lock_timeout):
        for name in HYDRA_WRITES:  # Hydra's own files pass no tripletlab writer: redact them
            redact_file(folder / name)
        rows = collect_rows([folder], relative_to=folder)
        metric = metric or default_metric(rows)
        text = write_summary(rows, folder, metric, title=f"Sweep {folder}", plot=plot)
        try:  # TensorBoard's HPARAMS tab: the hparams that differ, the metric first
            from tripletlab.tracking.tensorboard import write_sweep_experiment

            write_sweep_experiment(folder, list(rows["_config"]) if len(rows) else [], metric)
        except Exception as err:  # noqa: BLE001 - the table is what matters
            log.warning("could not write the sweep's HParams experiment: %s", err)
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
        exit_on_failure: at the end of the sweep, exit 1 when a row of summary.csv is not
            finished (failed, interrupted or still running; a collapse is a finished run),
            after one line such as ``2 of 6 jobs failed: see SWEEP/summary.csv`` or ``2 of
            6 jobs did not finish (1 failed, 1 interrupted): see SWEEP/summary.csv``.
        plot: also draw summary.png.
        lock_lease, lock_timeout: seconds, for the summary's lock (:func:`locked`); every
            job of a sweep must use the same lease.
    """

    def __init__(
        self,
        exit_on_failure: bool = True,
        plot: bool = True,
        lock_lease: float = LOCK_LEASE_SECONDS,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    ) -> None:
        self.exit_on_failure = exit_on_failure
        self.plot = plot
        self.lock = {"lock_lease": float(lock_lease), "lock_timeout": float(lock_timeout)}

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from tripletlab.lease_lock import LockTimeout

        if not _is_multirun(config):
            return
        # Training recorded the job's status (a failure too) in its run folder; a job that
        # failed before training started (Hydra, the task function) left no summary.
        _record_early_failure(config, job_return)
        try:
            update_sweep_summary(_sweep_dir(config), _metric(config), self.plot, **self.lock)
        except LockTimeout as err:  # the job itself is done; the sweep's end rebuilds it
            log.warning("summary.csv not updated after this job: %s", err)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from tripletlab.lease_lock import LockTimeout

        folder = _sweep_dir(config)
        if not folder.is_dir():
            return
        try:
            rows, text = update_sweep_summary(folder, _metric(config), self.plot, **self.lock)
        except LockTimeout as err:
            print(f"error: the sweep's summary was not written: {err}", file=sys.stderr)
            sys.exit(1)
        if rows.empty:
            return
        print(text, end="", flush=True)
        print(
            f"summary: {folder / 'summary.csv'} (and summary.md, summary_stats.csv, summary.png)",
            flush=True,
        )
        unfinished = failures(rows)
        if unfinished and self.exit_on_failure:
            print(
                f"{unfinished_line(unfinished, len(rows))}: see {folder / 'summary.csv'}",
                file=sys.stderr,
                flush=True,
            )
            # SystemExit is not an Exception: it passes through Hydra's callback wrapper and
            # its error reporting, so the sweep's exit status is 1.
            sys.exit(1)


def _record_early_failure(config: Any, job_return: Any) -> None:
    """Mark the job failed, with its error, if it failed and its folder has no summary."""
    from hydra.core.utils import JobStatus

    from tripletlab.run_folder import RunFolder, Status

    if getattr(job_return, "status", None) != JobStatus.FAILED:
        return
    try:
        folder = RunFolder(str(config.hydra.runtime.output_dir))
    except Exception:  # noqa: BLE001 - no output folder known: nothing to mark
        return
    if folder.read_summary():
        return
    error = getattr(job_return, "_return_value", None)
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else None
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.mark(Status.FAILED, text or "the job failed before training started")


def failures(rows: Any) -> list[dict]:
    """Rows (a DataFrame from :func:`update_sweep_summary`) of the jobs that did not finish
    (failed, interrupted, still marked running), as dicts."""
    from tripletlab.run_folder import FINISHED

    return [r for r in rows.to_dict("records") if r["status"] not in FINISHED]


def unfinished_line(unfinished: list[dict], total: int) -> str:
    """``2 of 6 jobs failed`` when every unfinished job failed, else ``3 of 6 jobs did not
    finish (1 failed, 2 interrupted)``: a killed job is not a failed one."""
    counts: dict[str, int] = {}
    for row in unfinished:
        status = str(row["status"] or "unknown")
        counts[status] = counts.get(status, 0) + 1
    if set(counts) == {"failed"}:
        return f"{len(unfinished)} of {total} jobs failed"
    detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"{len(unfinished)} of {total} jobs did not finish ({detail})"


# -------------------------------------------------------------------------- resume
class UntrustedSweep(TripletLabError):
    """A sweep folder's ``multirun.yaml`` asks for more than a sweep's own overrides."""


# What a resume replays of the Hydra overrides a sweep was started with: the choice of
# launcher and sweeper (an installed config, by name) and their resource and search
# settings. Never what runs code or changes the environment: callbacks, env_set, searchpath,
# a launcher's setup commands, srun arguments or sbatch parameters, any _target_.
RESUMABLE_HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")
RESUMABLE_LAUNCHER_KEYS = frozenset(
    {
        # joblib
        *("n_jobs", "backend", "prefer", "verbose", "timeout", "pre_dispatch", "batch_size"),
        # submitit (Slurm and local)
        *("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb"),
        *("nodes", "name", "partition", "qos", "comment", "constraint", "exclude", "gres"),
        *("cpus_per_gpu", "gpus_per_task", "mem_per_gpu", "mem_per_cpu", "account"),
        *("signal_delay_s", "max_num_timeout", "array_parallelism", "stderr_to_stdout"),
    }
)
RESUMABLE_SWEEPER_KEYS = frozenset(
    {"n_trials", "n_jobs", "direction", "storage", "study_name", "sampler.seed"}
)
# Dropped: the caller points hydra.sweep.dir at the folder; -m sets the mode.
_REPLACED_ON_RESUME = ("hydra.sweep.dir", "hydra.mode")
# The callbacks tripletlab's own configs add (conf/config.yaml, hparams_search/optuna.yaml).
OWN_CALLBACKS = frozenset(
    {
        "tripletlab.sweep.SweepSummary",
        "tripletlab.sweep.ContinueStudy",  # its name in sweep folders made before
        "tripletlab.search.ContinueStudy",
        "tripletlab.launchers.CheckLauncher",
        "tripletlab.credentials.SecretGate",
    }
)
_NAME = re.compile(r"[\w-]+")
# An OmegaConf resolver call, ${name:...}; only ${now:...} is replayed (oc.env would copy
# the environment into the jobs' configs, and from there to a tracking server or a URL).
_RESOLVER = re.compile(r"\$\{\s*([\w.]+)\s*:")


def _special_key(key: str) -> bool:
    """A key part Hydra or OmegaConf acts on (``_target_``, ``_partial_``...)."""
    return any(part.startswith("_") and part.endswith("_") for part in re.split(r"[./]", key))


def _replay_problem(override: Any, task: bool) -> str | None:
    """Why ``override`` (parsed by Hydra) is not replayed on a resume; None if it is."""
    key = str(override.key_or_group)
    package = str(override.package or "")
    for name in _RESOLVER.findall(override.input_line):
        if name != "now":
            return f"the resolver ${{{name}:...}}"
    if _special_key(key) or package.startswith("hydra") or _special_key(package):
        return "a special key"
    if not key.startswith("hydra"):
        return None
    if task:
        return "a Hydra setting among the job overrides"
    if override.is_delete() or override.is_add() or override.is_force_add():
        return "an added or deleted Hydra key"
    if key in RESUMABLE_HYDRA_GROUPS:
        value = override.value()
        return None if isinstance(value, str) and _NAME.fullmatch(value) else "a config name"
    for prefix, allowed in (
        ("hydra.launcher.", RESUMABLE_LAUNCHER_KEYS),
        ("hydra.sweeper.", RESUMABLE_SWEEPER_KEYS),
    ):
        if key.startswith(prefix) and key[len(prefix) :] in allowed:
            return None
    if key.startswith("hydra.sweeper.params."):  # a search space: one job key each
        param = key[len("hydra.sweeper.params.") :]
        return "a Hydra key in the search space" if param.startswith("hydra") else None
    return "not a launcher or sweeper setting"


def _unknown_callbacks(hydra_node: Any) -> list[str]:
    """``hydra.callbacks`` and ``hydra.job.env_set`` entries of a saved config that
    tripletlab's own configs do not write."""
    found = []
    callbacks = hydra_node.get("callbacks") or {}
    for name, spec in callbacks.items() if isinstance(callbacks, dict) else []:
        target = spec.get("_target_") if isinstance(spec, dict) else spec
        if target not in OWN_CALLBACKS:
            found.append(f"hydra.callbacks.{name} ({target})")
    job = hydra_node.get("job") or {}
    env_set = job.get("env_set") if isinstance(job, dict) else None
    found += [f"hydra.job.env_set.{k}" for k in (env_set or {})]
    return found


def resume_overrides(sweep_dir: str | os.PathLike) -> list[str]:
    """The overrides of the sweep a folder holds (from its ``multirun.yaml``), Hydra's own
    first, without ``hydra.sweep.dir`` (the caller points it at the folder).

    Only the sweep's own overrides are replayed: the jobs' keys, and the launcher's and the
    sweeper's settings (:data:`RESUMABLE_LAUNCHER_KEYS`...). A folder may come from someone
    else: a ``multirun.yaml`` that asks for anything else (a callback, ``env_set``,
    ``searchpath``, a launcher's ``setup`` commands, a ``_target_``, a resolver such as
    ``${oc.env:...}``), in its overrides or in its config, raises :class:`UntrustedSweep`
    naming every such entry, and nothing runs.
    """
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {sweep_dir} is not a sweep folder")
    # Plain YAML, not OmegaConf: an override may hold an interpolation such as ${now:...},
    # which must come back as typed, not resolved.
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    hydra_node = (saved.get("hydra") or {}) if isinstance(saved, dict) else {}
    if not isinstance(hydra_node, dict):
        raise ValueError(f"{path}: its hydra entry is not a mapping")
    overrides = hydra_node.get("overrides") or {}
    refused = _unknown_callbacks(hydra_node)
    out = []
    parser = OverridesParser.create()
    for task, lines in ((False, overrides.get("hydra") or []), (True, overrides.get("task") or [])):
        for line in map(str, lines):
            try:
                (override,) = parser.parse_overrides([line])
            except Exception:  # noqa: BLE001 - Hydra's grammar error, whatever its class
                refused.append(f"{line} (not an override)")
                continue
            if not task and str(override.key_or_group) in _REPLACED_ON_RESUME:
                continue
            problem = _replay_problem(override, task)
            if problem:
                refused.append(f"{line} ({problem})")
            else:
                out.append(line)
    if refused:
        raise UntrustedSweep(
            f"{path} asks for more than a sweep's own overrides, and a sweep folder may come "
            f"from someone else: {'; '.join(refused)}. Nothing was run; if you trust them, "
            "pass the settings you want yourself after --resume DIR"
        )
    return out


# ------------------------------------------------------------------- Optuna studies
# In tripletlab.search (a search's failed trials, and a persistent study that continues).
# Sweep folders and configs written before name them here (tripletlab.sweep.ContinueStudy):
# resolved on use, so that search (which asks this module for sweep_dir) is not imported
# back from here.
_MOVED_TO_SEARCH = {"ContinueStudy", "check_storage_versions", "sqlite_path", "trials_done"}


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_SEARCH:
        return getattr(importlib.import_module("tripletlab.search"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
