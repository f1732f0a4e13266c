"""Where a run reports besides its folder: TensorBoard (always) and the tracker that
``logger=<name>`` picks (``mlflow``; ``none``: no other).

A tracker is a training callback (:class:`Tracker`: ``on_train_begin``, ``on_epoch_end(row)``,
``on_train_end(summary)``, any of them), built from config by the code of the logger's
entry in :data:`tripletlab.registry.TRACKERS` (declared in :mod:`tripletlab.options.logger`,
or by a plugin: docs/extending.md). A tracker that fails never fails the run: the loop's
:class:`~tripletlab.training.callbacks.Callbacks` call trackers guarded (the first error is
a warning and switches the tracker off).

- :mod:`.tensorboard`: scalars and HParams of a run, a sweep's HParams experiment;
- :mod:`.projector`: the TensorBoard projector's files;
- :mod:`.mlflow`: ``logger=mlflow``.
"""

from __future__ import annotations

import logging
from typing import Any

from tripletlab.config import to_container
from tripletlab.credentials import redact_tree
from tripletlab.registry import TRACKERS, describe
from tripletlab.run_folder import RunFolder
from tripletlab.targets import TargetError, check_target
from tripletlab.tracking import mlflow as _mlflow  # noqa: F401  (registers logger=mlflow)
from tripletlab.tracking.base import Tracker
from tripletlab.tracking.tensorboard import TensorBoardTracker

log = logging.getLogger("tripletlab")

__all__ = ["Tracker", "make_trackers"]


@TRACKERS.register("none")
def no_tracker(logger_cfg: Any, folder: RunFolder, config: Any) -> None:
    """``logger=none``: TensorBoard only."""
    return None


def make_trackers(cfg: Any, folder: RunFolder) -> list[Any]:
    """TensorBoard's tracker and the logger's (to add to the callbacks guarded). A
    ``logger._target_`` that cannot be imported or does not take ``(logger_cfg, folder,
    config)`` is the user's mistake: ConfigError naming it, before anything is built. What
    a tracker raises while built is a warning.
    Call it on the process that writes the run folder (the chief) only."""
    logger_cfg = getattr(cfg, "logger", None)
    logger = str(getattr(logger_cfg, "name", "none"))
    target = getattr(logger_cfg, "_target_", None)
    if target is not None:  # logger=custom: checked at the start, not a warning mid-run
        check_target("logger._target_", target, logger_cfg, folder, {})
    trackers = []
    for name, build in (
        ("TensorBoard", lambda config: TensorBoardTracker(folder, config)),
        (logger, lambda config: TRACKERS.get(logger)(logger_cfg, folder, config)),
    ):
        try:  # the config a tracker records (HParams, MLflow params) is redacted first
            tracker = build(redact_tree(to_container(cfg) or {}, f"the {name} tracker"))
        except (KeyboardInterrupt, TargetError):  # Ctrl-C; a target the call refused
            raise
        except BaseException as err:  # noqa: BLE001 - a tracker never fails the run
            log.warning("%s tracker failed (%s); the run goes on without it", name, describe(err))
            continue
        if tracker is not None:
            trackers.append(tracker)
    return trackers
