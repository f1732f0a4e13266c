"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

Every config group in ``conf/`` is validated against these schemas when Hydra composes the
config, so a typo in a key or a value of the wrong type fails before anything is built.
Value checks that types cannot express (ranges, closed sets of names) live in
:func:`validate` and raise :class:`~tripletlab.errors.ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from tripletlab.errors import ConfigError

DATASETS = ("fashion_mnist", "mnist", "digits", "image_folder")
MODELS = ("lenet", "small_cnn", "vgg_gap")
STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
SAMPLERS = ("random", "pk")
JIT_CHOICES = ("auto", "true", "false")
PRECISIONS = ("auto", "off", "float16", "bfloat16")
SCHEDULES = ("constant", "cosine")
AUGMENTATIONS = ("none", "translate", "flip_translate")
METRICS = (
    "precision_at_1",
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "map_at_r",
    "knn_accuracy",
)


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str | None = None  # folder with the files; None searches the usual places
    download: bool = True  # fall back to the official mirror when no local copy exists
    url: str | None = None  # mirror override (None: the official one)
    image_size: int | None = None  # resize to image_size x image_size; None keeps the native size
    channels: int | None = None  # 1 (grayscale) or 3 (RGB); None keeps the native channels
    test_fraction: float = 0.2  # digits / image_folder without train/ and test/ sub-folders
    split_seed: int = 0  # the train/test split is fixed, whatever the run's seed
    max_train: int | None = None  # keep only the first N training images (tiny runs)
    max_test: int | None = None


@dataclass
class ModelConfig:
    name: str = MISSING
    embedding_size: int = 64
    l2_normalize: bool = True
    num_channels: int = 32  # small_cnn / vgg_gap: channels of the first block
    batch_norm: bool = True


@dataclass
class MiningConfig:
    strategy: str = MISSING
    margin: float = 0.5
    squared: bool = False
    soft_margin: bool = False


@dataclass
class SamplerConfig:
    name: str = "random"
    classes_per_batch: int = 8  # pk: P
    images_per_class: int = 8  # pk: K


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 64  # random sampler; pk uses P * K
    learning_rate: float = 1e-3
    warmup_epochs: float = 0.0
    schedule: str = "constant"  # constant | cosine (decays to 0 after warm-up)
    weight_decay: float = 0.0  # L2 on kernels, added as regularisation losses
    augment: str = "none"  # none | translate | flip_translate
    jit_compile: str = "auto"  # auto (on for GPU, off for CPU) | true | false
    # auto (bfloat16 where the hardware has bf16 matrix units, else off) | off | float16 | bfloat16
    mixed_precision: str = "auto"
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism
    progress: str = "auto"  # auto (bar on a terminal) | bar | log
    threads: int = 0  # TensorFlow intra-op threads; 0: TensorFlow's default (all cores)
    checkpoint_every: int = 1  # epochs
    collapse_patience: int = 2  # epochs a collapse must last before the run stops


@dataclass
class EvalConfig:
    every: int = 1  # evaluate every N epochs (and always after the last)
    batch_size: int = 1024
    knn_k: int = 10
    max_points: int = 2000  # projector / PCA plot
    chunk_size: int = 1024  # queries per chunk in the retrieval metrics


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 42
    optimized_metric: str = "precision_at_1"


def register_configs() -> None:
    """Register the schema; ``conf/config.yaml`` lists ``config_schema`` first in its defaults,
    so every group it composes is merged into (and checked against) these dataclasses."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)


def _choice(path: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = str(value)
    if text in ("True", "False"):  # a YAML/override bool stored in a str field
        text = text.lower()
    if text not in allowed:
        raise ConfigError(f"{path}={value!r} is not valid; choose one of: {', '.join(allowed)}")
    return text


def _positive(path: str, value: Any, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{path}={value!r} is not valid; it must be {bound}")


def validate(cfg: DictConfig | Config) -> None:
    """Check values that the types cannot; raise ConfigError with the key and the fix."""
    c = cfg
    _choice("dataset.name", c.dataset.name, DATASETS)
    _choice("model.name", c.model.name, MODELS)
    _choice("mining.strategy", c.mining.strategy, STRATEGIES)
    _choice("sampler.name", c.sampler.name, SAMPLERS)
    _choice("trainer.schedule", c.trainer.schedule, SCHEDULES)
    _choice("trainer.augment", c.trainer.augment, AUGMENTATIONS)
    _choice("trainer.jit_compile", c.trainer.jit_compile, JIT_CHOICES)
    _choice("trainer.mixed_precision", normalize_precision(c.trainer.mixed_precision), PRECISIONS)
    _choice("trainer.progress", c.trainer.progress, ("auto", "bar", "log"))
    _choice("optimized_metric", c.optimized_metric, METRICS)
    if c.dataset.channels not in (None, 1, 3):
        raise ConfigError(f"dataset.channels={c.dataset.channels!r} is not valid; use 1, 3 or null")
    if not 0.0 < c.dataset.test_fraction < 1.0:
        raise ConfigError(
            f"dataset.test_fraction={c.dataset.test_fraction!r} must be between 0 and 1"
        )
    for path, value in (
        ("dataset.image_size", c.dataset.image_size),
        ("dataset.max_train", c.dataset.max_train),
        ("dataset.max_test", c.dataset.max_test),
        ("model.embedding_size", c.model.embedding_size),
        ("model.num_channels", c.model.num_channels),
        ("mining.margin", c.mining.margin if not c.mining.soft_margin else 1.0),
        ("sampler.classes_per_batch", c.sampler.classes_per_batch),
        ("sampler.images_per_class", c.sampler.images_per_class),
        ("trainer.epochs", c.trainer.epochs),
        ("trainer.batch_size", c.trainer.batch_size),
        ("trainer.learning_rate", c.trainer.learning_rate),
        ("trainer.checkpoint_every", c.trainer.checkpoint_every),
        ("eval.every", c.eval.every),
        ("eval.batch_size", c.eval.batch_size),
        ("eval.knn_k", c.eval.knn_k),
        ("eval.chunk_size", c.eval.chunk_size),
    ):
        _positive(path, value)
    for path, value in (
        ("trainer.warmup_epochs", c.trainer.warmup_epochs),
        ("trainer.weight_decay", c.trainer.weight_decay),
        ("trainer.collapse_patience", c.trainer.collapse_patience),
        ("trainer.threads", c.trainer.threads),
        ("eval.max_points", c.eval.max_points),
    ):
        _positive(path, value, allow_zero=True)
    if c.trainer.warmup_epochs > c.trainer.epochs:
        raise ConfigError(
            f"trainer.warmup_epochs={c.trainer.warmup_epochs} is longer than "
            f"trainer.epochs={c.trainer.epochs}"
        )
    if c.sampler.name == "pk" and c.sampler.classes_per_batch < 2:
        raise ConfigError(
            "sampler.classes_per_batch must be >= 2 with the pk sampler: a triplet needs a "
            "negative from another class"
        )
    if c.sampler.name == "pk" and c.sampler.images_per_class < 2:
        raise ConfigError(
            "sampler.images_per_class must be >= 2 with the pk sampler: a triplet needs a "
            "positive from the same class"
        )
    if c.sampler.name == "random" and c.trainer.batch_size < 3:
        raise ConfigError(
            f"trainer.batch_size={c.trainer.batch_size} is too small to form a triplet; use >= 3"
        )


def normalize_precision(value: Any) -> str:
    """YAML reads a bare ``off`` as False: accept it, and None, as "off"."""
    if value is None or value is False or str(value).lower() in ("false", "none", "no", "off"):
        return "off"
    return str(value)


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
