"""Hydra at the edge: turn a composed config into a run folder and a return value."""

from __future__ import annotations

import logging
import os
import sys

from omegaconf import DictConfig

from tripletlab.errors import TripletLabError

log = logging.getLogger("tripletlab")


def run_task(cfg: DictConfig) -> float:
    """Train ``cfg`` in Hydra's output folder; return the optimised metric for sweepers.

    A user mistake (bad data, a bad value) is printed as one line with no traceback: a
    single run exits 1; in a sweep the job is recorded as failed and the sweep goes on.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from tripletlab.train import train

    hydra_cfg = HydraConfig.get()
    try:
        return train(cfg, hydra_cfg.runtime.output_dir)
    except TripletLabError as err:
        log.error("%s", err)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return float("nan")
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
