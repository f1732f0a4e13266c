"""Training one configuration into one run folder.

:func:`train` is the entry point (``run.py``, ``tripletlab.train``, sweeps); the loop is
:class:`~tripletlab.training.loop.Trainer`. A failure is recorded here, once, in the run's
summary, whatever raised it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from tripletlab.config import to_container
from tripletlab.credentials import refuse_config
from tripletlab.errors import TripletLabError, storage_fault
from tripletlab.run_folder import RunFolder, RunLock, Status
from tripletlab.run_record import claim
from tripletlab.training.callbacks import Callbacks

log = logging.getLogger("tripletlab")


def _require_utf8_path(folder: RunFolder) -> None:
    """RunFolderError, before training, when the folder's path is not UTF-8 (Linux allows
    any bytes): TensorFlow's checkpoints and TensorBoard take only UTF-8 paths."""
    from tripletlab.io_utils import escape_name
    from tripletlab.run_folder import RunFolderError

    path = str(folder.path.absolute())
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise RunFolderError(
            f"the run folder {escape_name(path)} has a name that is not UTF-8, and TensorFlow "
            "writes checkpoints only to UTF-8 paths: train into another folder (hydra.run.dir, "
            "hydra.sweep.dir)"
        ) from None


def train(
    cfg: Any,
    run_dir: str | os.PathLike,
    callbacks: Sequence[Any] = (),
    on_claimed: Callable[[], None] | None = None,
) -> float:
    """Train ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint); the optimised metric.

    ``callbacks``: objects with some of ``on_train_begin()``, ``on_epoch_end(row)`` and
    ``on_train_end(summary)`` (:mod:`.callbacks`); the trackers (TensorBoard, the logger)
    are added after them on the chief.
    ``on_claimed``: called once when a folder that holds no run becomes this process's
    (locked, its record written: :func:`~tripletlab.run_record.claim`): Hydra's own files
    are written then, not before; a resume writes none of them again.

    The chief holds the folder's lock (:class:`~tripletlab.run_folder.RunLock`) while it
    trains; a disk-full or unwritable-folder error becomes one
    :class:`~tripletlab.errors.StorageError`.

    The Keras precision policy the run sets is global: it is put back afterwards, so that
    models built later in the same process (tests, notebooks) are not silently bfloat16.
    """
    from tripletlab.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()
    refuse_config(cfg)  # the credentials gate, before the folder is made (every caller)
    folder = RunFolder(run_dir)
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        chief = _is_chief(cfg)
        with RunLock(folder) if chief else contextlib.nullcontext():
            if chief:  # the record is written once, by the first run in the folder
                claim(folder, cfg, str(_resume_mode(cfg)), on_claimed)
            return _train_claimed(cfg, folder, Callbacks(callbacks), chief)
    except OSError as err:
        fault = storage_fault(err, folder.path)
        if fault is None:
            raise
        raise fault from None


def _train_claimed(cfg: Any, folder: RunFolder, callbacks: Callbacks, chief: bool) -> float:
    import keras

    from tripletlab.tracking import make_trackers
    from tripletlab.training.loop import Trainer

    policy = keras.mixed_precision.global_policy()
    trainer, begun = None, False
    try:
        _require_utf8_path(folder)  # recorded as the run's failure, like any other
        trainer = Trainer(cfg, folder, callbacks, chief=chief)
        if chief:  # only the chief reports (multi-worker: the other workers write nothing)
            callbacks.extend(make_trackers(cfg, folder), guarded=True)
        callbacks.on_train_begin()
        begun = True
        return trainer.run()
    except KeyboardInterrupt:
        if chief:
            _record(trainer, folder, cfg, Status.INTERRUPTED, "interrupted by the user")
        raise
    except TripletLabError as err:
        if chief:
            _record(trainer, folder, cfg, Status.FAILED, str(err))
        raise
    except Exception as err:
        fault = storage_fault(err, folder.path) or _cluster_fault(err, cfg, folder)
        if chief:
            why = str(fault or f"{type(err).__name__}: {err}")
            _record(trainer, folder, cfg, Status.FAILED, why)
        if fault is not None:
            raise fault from None
        raise
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if begun:  # the summary is final now, whatever ended the run
            callbacks.on_train_end(folder.read_summary())


def _cluster_fault(err: BaseException, cfg: Any, folder: RunFolder):
    """distribute=multi_worker: a dead or silent worker as one ClusterError, else None."""
    from tripletlab.distribute import cluster_fault

    distribute = getattr(cfg, "distribute", None)
    return None if distribute is None else cluster_fault(err, distribute, folder.path)


def _is_chief(cfg: Any) -> bool:
    from tripletlab.distribute import task_is_chief

    distribute = getattr(cfg, "distribute", None)
    return distribute is None or task_is_chief(distribute)


def _resume_mode(cfg: Any) -> str:
    return getattr(getattr(cfg, "trainer", None), "resume", "auto") or "auto"


def _record(trainer, folder: RunFolder, cfg: Any, status: Status, error: str) -> None:
    """Record the failure in the run summary (the chief's :func:`_train_claimed` calls it);
    a full disk only warns here, as the error being raised already says what went wrong."""
    try:
        if trainer is not None:
            trainer.write_summary(status, error=error)
            return
        try:
            config = to_container(cfg)
        except Exception:  # noqa: BLE001 - an unresolvable config is what failed
            config = None
        folder.mark(status, error, config)
    except OSError as err:
        log.warning("could not record the run's status in %s: %s", folder.summary_path, err)
