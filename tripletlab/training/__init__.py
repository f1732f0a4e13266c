"""Training one configuration into one run folder.

:func:`train` is the entry point (``run.py``, ``tripletlab.train``, sweeps); the loop is
:class:`~tripletlab.training.loop.Trainer`. A failure is recorded here, once, in the run's
summary, whatever raised it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from tripletlab.errors import TripletLabError
from tripletlab.run_folder import RunFolder, Status


def train(cfg: Any, run_dir: str | os.PathLike, callbacks: Sequence[Any] = ()) -> float:
    """Train ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint); the optimised metric.

    ``callbacks``: objects with ``on_epoch_end(row)`` (see :class:`~.loop.Trainer`).

    The Keras precision policy the run sets is global: it is put back afterwards, so that
    models built later in the same process (tests, notebooks) are not silently bfloat16.
    """
    import keras

    from tripletlab.tracking import finish_trackers, start_trackers
    from tripletlab.training.loop import Trainer

    folder = RunFolder(run_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    policy = keras.mixed_precision.global_policy()
    trainer, trackers = None, []
    try:
        trainer = Trainer(cfg, folder, callbacks)
        # TensorBoard HParams and logger=mlflow (tripletlab.tracking): epoch callbacks that
        # only warn when they fail; finished below, once the summary is final.
        # Only the chief reports (multi-worker: the other workers write nothing).
        trackers = start_trackers(cfg, folder) if trainer.chief else []
        trainer.callbacks.extend(trackers)
        return trainer.run()
    except KeyboardInterrupt:
        _record(trainer, folder, cfg, Status.INTERRUPTED, "interrupted by the user")
        raise
    except TripletLabError as err:
        _record(trainer, folder, cfg, Status.FAILED, str(err))
        raise
    except Exception as err:
        _record(trainer, folder, cfg, Status.FAILED, f"{type(err).__name__}: {err}")
        raise
    finally:
        keras.mixed_precision.set_global_policy(policy)
        finish_trackers(trackers, folder)


def _record(trainer, folder: RunFolder, cfg: Any, status: Status, error: str) -> None:
    from tripletlab.distribute import task_is_chief

    try:
        if not task_is_chief(cfg.distribute):
            return  # only the chief writes the run folder
    except Exception:  # noqa: BLE001 - a config without the key: a single-host run
        pass
    if trainer is not None:
        trainer.write_summary(status, error=error)
        return
    config = None
    if hasattr(cfg, "_metadata"):
        from tripletlab.config import to_container

        try:
            config = to_container(cfg)
        except Exception:  # noqa: BLE001 - an unresolvable config is what failed
            config = None
    folder.mark(status, error, config)
