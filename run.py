"""The one entry point: ``python run.py [overrides]`` or ``python run.py -m ...`` (a sweep)."""

import hydra
from omegaconf import DictConfig

from tripletlab.config import register_configs
from tripletlab.hydra_app import run_task

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_task(cfg)


if __name__ == "__main__":
    main()
