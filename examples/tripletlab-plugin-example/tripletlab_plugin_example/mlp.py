"""``model=mlp``: a small MLP on the flattened image, under tripletlab's embedding head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tripletlab.options import setting
from tripletlab.options.model import ModelConfig
from tripletlab.registry import Option


@dataclass
class MlpConfig(ModelConfig):
    name: str = "mlp"
    hidden: int = setting(128, "units of each hidden layer", bound=">0")
    layers: int = setting(2, "hidden layers", bound=">0")


def mlp(x: Any, cfg: Any, reg: Any) -> Any:
    """images x [B, H, W, C] -> features [B, hidden]."""
    import keras

    x = keras.layers.Flatten()(x)
    for _ in range(int(cfg.layers)):
        x = keras.layers.Dense(int(cfg.hidden), activation="relu", kernel_regularizer=reg)(x)
    return x


BACKBONE = Option("mlp", MlpConfig, target=mlp)
