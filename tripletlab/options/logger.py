"""``logger=<name>``: the schemas and entries of the package's trackers; the code is in
:mod:`tripletlab.tracking` (each attaches itself with ``@TRACKERS.register``).

A tracker is built by ``(logger_cfg, folder, config) -> tracker or None``: its logger node,
the run's :class:`~tripletlab.run_folder.RunFolder` and the run's config as plain data; the
tracker has any of ``on_train_begin()``, ``on_epoch_end(row)``, ``on_train_end(summary)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from tripletlab.options import setting
from tripletlab.registry import TRACKERS, Option


@dataclass
class LoggerConfig:
    """``logger=<name>``: where a run reports besides its folder and TensorBoard."""

    name: str = setting("none", "the tracker, chosen with logger=<name>")


@dataclass
class MlflowLoggerConfig(LoggerConfig):
    name: str = "mlflow"
    tracking_uri: str | None = setting(
        None, "null: $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db (artifacts in outputs/)"
    )
    experiment: str | None = setting(
        None, "null: the sweep folder for a sweep's jobs, else tripletlab"
    )


@dataclass
class CustomLoggerConfig(LoggerConfig):
    """``logger=custom logger._target_=my_module.MyTracker``: the user's tracker, built
    with ``hydra.utils.instantiate`` (docs/extending.md has the contract)."""

    name: str = "custom"
    _target_: str = setting(
        MISSING, "dotted path of a callable(logger_cfg, folder, config) -> tracker"
    )


TRACKERS.add(Option("none"))
TRACKERS.add(Option("mlflow", MlflowLoggerConfig))
TRACKERS.add(Option("custom", CustomLoggerConfig, target="tripletlab.targets:custom_tracker"))
