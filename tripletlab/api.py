"""The Python API for notebooks and scripts: compose a config, train it into a folder.

    import tripletlab
    cfg = tripletlab.compose(["dataset=digits", "trainer.epochs=2"])
    value = tripletlab.train(cfg, "outputs/notebook/run1")

``compose`` reads the same ``conf/`` as the command line, with the same overrides and the
same checks; ``train`` is what ``run.py`` calls for one run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> Any:
    """The composed config (an OmegaConf DictConfig typed by the schemas) for ``overrides``.

    Raises ConfigError with one readable line for an unknown group option, a key typo or a
    value of the wrong type, and for values the checks in :mod:`tripletlab.config` reject.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tripletlab.compose_errors import explain_compose_error
    from tripletlab.config import register_configs, validate
    from tripletlab.errors import ConfigError
    from tripletlab.resources import config_dir

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(
                config_name="config",
                overrides=[str(o) for o in overrides],
                return_hydra_config=return_hydra_config,
            )
    except Exception as exc:  # Hydra's and OmegaConf's errors: a user's mistake
        if isinstance(exc, ConfigError):
            raise
        text = explain_compose_error(exc) or _hydra_message(exc)
        raise ConfigError(f"cannot compose the config: {text}") from None
    finally:
        GlobalHydra.instance().clear()
    if return_hydra_config:
        from omegaconf import OmegaConf

        from tripletlab.credentials import config_strings, refuse_secrets

        # Hydra's own settings too: an Optuna storage URI lives in hydra.sweeper.
        refuse_secrets(config_strings(cfg.hydra, "hydra."))
        validate(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    else:
        validate(cfg)
    return cfg


def train(cfg: Any, run_dir: str | os.PathLike, callbacks: Sequence[Any] = ()) -> float:
    """Train ``cfg`` into ``run_dir`` (created; resumed if it holds a checkpoint).

    Returns the value of ``cfg.optimized_metric`` (NaN when it could not be computed).
    ``callbacks``: objects with ``on_epoch_end(row)``, called after each epoch with its
    metrics row (a dict), once the epoch is checkpointed.
    Writes ``.hydra/config.yaml`` too, when the folder holds no run yet, so the reuse
    commands (``tripletlab-evaluate RUN_DIR``...) work on runs started from Python.
    """
    from tripletlab.training import train as train_run

    return train_run(cfg, Path(run_dir), callbacks)


def _hydra_message(exc: BaseException) -> str:
    """Hydra's message on one line, without its search path, with OmegaConf's reason
    ("Error merging override trainer.epochs=abc: Value 'abc' ... could not be converted
    to Integer")."""
    from tripletlab.errors import one_line

    text = one_line(exc).split("; Config search path")[0]
    cause = exc.__cause__
    if cause is not None:
        reason = one_line(cause)
        if reason and reason not in text:
            text = f"{text}: {reason}"
    return text
