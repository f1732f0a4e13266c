"""``model=<name>``: the schemas and entries of the package's backbones; the code is in
:mod:`tripletlab.models` (each backbone attaches itself with ``@BACKBONES.register``).

A backbone is ``(x, cfg, reg) -> features``: images x [B, H, W, C] (a Keras tensor), its
model node ``cfg``, a kernel regulariser ``reg`` (or None) -> features [B, F]; the
embedding head (dense to ``embedding_size``, optional L2 normalisation) goes on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from tripletlab.errors import ConfigError
from tripletlab.options import setting
from tripletlab.registry import BACKBONES, Option


@dataclass
class ModelConfig:
    """The keys every backbone has (a new backbone without keys of its own needs no more)."""

    name: str = setting(MISSING, "the backbone, chosen with model=<name>")
    embedding_size: int = setting(64, "dimension of the embedding", bound=">0")
    l2_normalize: bool = setting(True, "scale each embedding to unit length")


@dataclass
class LeNetConfig(ModelConfig):
    name: str = "lenet"


@dataclass
class CnnConfig(ModelConfig):
    num_channels: int = setting(32, "channels of the first block", bound=">0")
    batch_norm: bool = setting(True, "batch normalization after each convolution")


@dataclass
class SmallCnnConfig(CnnConfig):
    name: str = "small_cnn"


@dataclass
class VggGapConfig(CnnConfig):
    name: str = "vgg_gap"


@dataclass
class PretrainedConfig(ModelConfig):
    """A keras.applications backbone (global average pooling) under the embedding head."""

    embedding_size: int = 128
    weights: str = setting(
        "imagenet", "imagenet | none | path to a .weights.h5 file of the backbone"
    )
    freeze_batch_norm: bool = setting(
        True, "batch norm layers keep ImageNet's statistics and scales"
    )


@dataclass
class ResNet50Config(PretrainedConfig):
    name: str = "resnet50"


@dataclass
class EfficientNetV2B0Config(PretrainedConfig):
    name: str = "efficientnetv2_b0"


@dataclass
class MobileNetV3SmallConfig(PretrainedConfig):
    name: str = "mobilenetv3_small"


@dataclass
class CustomModelConfig(ModelConfig):
    """``model=custom model._target_=my_module.build_backbone``: the user's backbone, built
    with ``hydra.utils.instantiate`` (docs/extending.md has the contract)."""

    name: str = "custom"
    _target_: str = setting(
        MISSING, "dotted path of a callable(x, cfg, reg) -> features [B, F], x images [B, H, W, C]"
    )

    def check(self, cfg: Any) -> None:
        target = str(self._target_)
        if "." not in target:
            raise ConfigError(
                f"model._target_={target!r} is not valid; give the callable's dotted path, "
                "e.g. my_module.build_backbone"
            )


for _schema in (
    LeNetConfig,
    SmallCnnConfig,
    VggGapConfig,
    ResNet50Config,
    EfficientNetV2B0Config,
    MobileNetV3SmallConfig,
):
    BACKBONES.add(Option(_schema.name, _schema))
BACKBONES.add(Option("custom", CustomModelConfig, target="tripletlab.targets:custom_backbone"))
