"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

Every key and its default lives here, once; ``conf/`` picks the options (``dataset=digits``)
and holds what differs per experiment. Each option of a group whose keys differ has its own
schema (Hydra's "schema per option" pattern): ``conf/dataset/digits.yaml`` starts with
``- /schema/dataset/digits@_here_``, so the composed ``dataset`` node is a
:class:`DigitsConfig` and ``dataset=digits dataset.root=/x`` fails at composition (digits
has no root). A typo in a key or a value of the wrong type fails the same way. Value checks
that types cannot express (ranges, closed sets of names) live in :func:`validate` and raise
:class:`~tripletlab.errors.ConfigError` naming what is valid.

The names of datasets, models, strategies and samplers come from :mod:`tripletlab.registry`
(``DATASETS``, ``MODELS``, ``STRATEGIES``, ``SAMPLERS`` here are read from it). This module
is imported when Hydra composes, so it never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from tripletlab import registry
from tripletlab.credentials import config_strings, refuse_secrets
from tripletlab.errors import ConfigError
from tripletlab.runtime import normalize_precision

JIT_CHOICES = ("auto", "true", "false")
PRECISIONS = ("auto", "off", "float16", "bfloat16")
SCHEDULES = ("constant", "cosine")
AUGMENTATIONS = ("none", "translate", "flip_translate")
PROGRESS = ("auto", "bar", "log")
RESUME_MODES = ("auto", "never", "force")
# Keys a rerun into an existing run folder may change and still resume (trainer.resume=auto):
# they do not change what is trained. A key here covers everything below it.
RESUME_NEUTRAL_KEYS = (
    "trainer.epochs",  # extending a run
    "trainer.progress",
    "trainer.threads",
    "trainer.checkpoint_every",
    "trainer.resume",
    "eval",
    "logger",
    "optimized_metric",
)
DATASET_SPLITS = ("original", "classes")
STREAM_CHOICES = ("auto", "true", "false")
# The k of each recall_at_k that evaluation reports (tripletlab.metrics' default).
RECALL_KS = (1, 2, 4, 8)
# The retrieval metrics of a run (its metrics rows and summary), in order.
METRICS = (
    "precision_at_1",
    *(f"recall_at_{k}" for k in RECALL_KS),
    "map_at_r",
    "knn_accuracy",
)
# Keys whose value is one of a closed set: validate() checks them and the configuration
# reference lists them, from this one table. (The keys naming a group's option, such as
# dataset.name, ask the registries.)
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset.split": DATASET_SPLITS,
    "dataset.stream": STREAM_CHOICES,
    "trainer.schedule": SCHEDULES,
    "trainer.augment": AUGMENTATIONS,
    "trainer.jit_compile": JIT_CHOICES,
    "trainer.mixed_precision": PRECISIONS,
    "trainer.progress": PROGRESS,
    "trainer.resume": RESUME_MODES,
    "optimized_metric": METRICS,
    "mining.negatives": ("semi_hard", "hard"),
}
# Numbers that must be > 0, and those that must be >= 0 (null, where a key allows it, means
# "all" or "none" and passes); validate() and the configuration reference read these too.
POSITIVE_KEYS = (
    "dataset.image_size",
    "dataset.max_train",
    "dataset.max_test",
    "dataset.val_classes",
    "model.embedding_size",
    "model.num_channels",
    "mining.margin",  # unless mining.soft_margin
    "sampler.classes_per_batch",
    "sampler.images_per_class",
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.learning_rate",
    "trainer.checkpoint_every",
    "trainer.steps_per_epoch",
    "eval.every",
    "eval.batch_size",
    "eval.knn_k",
    "eval.chunk_size",
    "eval.sample_queries",
)
NON_NEGATIVE_KEYS = (
    "trainer.warmup_epochs",
    "trainer.weight_decay",
    "trainer.collapse_patience",
    "trainer.threads",
    "eval.max_points",
    "eval.full_every",
    "distribute.cpu_devices",
    "mining.memory_size",
    "mining.memory_start",
)
CHANNELS = (1, 3)  # dataset.channels, or null
FRACTION_KEYS = ("dataset.test_fraction",)  # strictly between 0 and 1


def setting(default: Any, help: str) -> Any:
    """A schema field with its one line of help, which the configuration reference
    (:mod:`tripletlab.config_reference`, docs/configuration.md) prints. A subclass that only
    changes a default (``image_size: int | None = 224``) keeps its base class's help."""
    return field(default=default, metadata={"help": help})


# The registries' names, read when asked for (a name registered at run time counts too).
_NAMES = {
    "DATASETS": registry.DATASETS,
    "MODELS": registry.BACKBONES,
    "STRATEGIES": registry.LOSSES,
    "SAMPLERS": registry.SAMPLERS,
    "LOGGERS": registry.TRACKERS,
}


def __getattr__(name: str) -> tuple[str, ...]:
    if name in _NAMES:
        return _NAMES[name].names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- dataset


@dataclass
class DatasetConfig:
    """The keys every dataset has; each option's schema below adds its own."""

    name: str = setting(MISSING, "the dataset, chosen with dataset=<name>")
    image_size: int | None = setting(
        None, "resize to image_size x image_size; null keeps the native size"
    )
    channels: int | None = setting(None, "1 (grayscale) or 3 (RGB); null keeps the native channels")
    split_seed: int = setting(
        0, "seeds the train/test split and the max_train/max_test subsets, whatever the seed"
    )
    max_train: int | None = setting(
        None, "keep N training images, a random subset seeded by split_seed; null: all"
    )
    max_test: int | None = setting(
        None, "keep N test images, a random subset seeded by split_seed; null: all"
    )
    split: str = setting(
        "original",
        "original: the dataset's own train/test split; classes: pool the splits, train on the "
        "first half of the classes (or train_classes), test on the others (unseen classes)",
    )
    train_classes: list[Any] | None = setting(
        None, "class names or ids to train on, with split=classes"
    )
    val_classes: int | None = setting(
        None,
        "with split=classes: hold out N training classes (picked by split_seed) and evaluate "
        "on them instead of the test classes, for tuning; null: evaluate on the test classes",
    )


@dataclass
class IdxDatasetConfig(DatasetConfig):
    """IDX files, found locally or downloaded (fashion_mnist, mnist)."""

    root: str | None = setting(None, "folder with the IDX files; null searches the usual places")
    download: bool = setting(True, "fall back to the official mirror when no local copy exists")
    url: str | None = setting(None, "mirror override; null: the official one")
    allow_insecure_url: bool = setting(False, "allow an http:// or file:// url (no TLS: opt in)")


@dataclass
class FashionMnistConfig(IdxDatasetConfig):
    name: str = "fashion_mnist"


@dataclass
class MnistConfig(IdxDatasetConfig):
    name: str = "mnist"


@dataclass
class DigitsConfig(DatasetConfig):
    name: str = "digits"
    test_fraction: float = setting(0.2, "share of each class held out for the test split")


@dataclass
class FilesDatasetConfig(DatasetConfig):
    """Image files on disk (image_folder and the benchmark layouts)."""

    root: str | None = setting(MISSING, "the dataset's folder")
    image_size: int | None = 224
    channels: int | None = 3
    stream: str = setting(
        "auto", "auto: stream from disk when decoding every image would take more than 1 GiB"
    )
    verify: bool = setting(
        True, "read every streamed file's header before training (names bad files)"
    )


@dataclass
class ImageFolderConfig(FilesDatasetConfig):
    name: str = "image_folder"
    root: str | None = setting(
        MISSING, "root/<class>/*.png, or root/train/<class> and root/test/<class>"
    )
    image_size: int | None = 64
    channels: int | None = None
    test_fraction: float = setting(
        0.2, "share of each class held out for the test split, without train/ and test/"
    )


@dataclass
class Cub200Config(FilesDatasetConfig):
    name: str = "cub200"
    root: str | None = setting(MISSING, "the CUB_200_2011 folder (images.txt, images/, ...)")
    split: str = setting(
        "classes", "classes: classes 1-100 train, 101-200 test; original: train_test_split.txt"
    )


@dataclass
class Cars196Config(FilesDatasetConfig):
    name: str = "cars196"
    root: str | None = setting(MISSING, "the folder with cars_annos.mat and car_ims/")
    split: str = setting(
        "classes", "classes: classes 1-98 train, 99-196 test; original: the annotations' test flag"
    )


@dataclass
class SopConfig(FilesDatasetConfig):
    name: str = "sop"
    root: str | None = setting(
        MISSING, "Stanford_Online_Products (Ebay_train.txt, Ebay_test.txt, ...)"
    )


@dataclass
class InShopConfig(FilesDatasetConfig):
    name: str = "inshop"
    root: str | None = setting(
        MISSING, "the folder with list_eval_partition.txt (or Eval/) and img/ (or Img/img/)"
    )


# --------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    """The keys every backbone has (a new backbone without keys of its own needs no more)."""

    name: str = setting(MISSING, "the backbone, chosen with model=<name>")
    embedding_size: int = setting(64, "dimension of the embedding")
    l2_normalize: bool = setting(True, "scale each embedding to unit length")


@dataclass
class LeNetConfig(ModelConfig):
    name: str = "lenet"


@dataclass
class CnnConfig(ModelConfig):
    num_channels: int = setting(32, "channels of the first block")
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


# --------------------------------------------------------------------------- mining, sampler


@dataclass
class MiningConfig:
    """The keys every strategy has; easy_positive and distance_weighted add their own."""

    strategy: str = setting(MISSING, "the mining strategy, chosen with mining=<name>")
    margin: float = setting(0.2, "the triplet margin (unused with soft_margin)")
    squared: bool = setting(False, "squared euclidean distances instead of euclidean")
    soft_margin: bool = setting(False, "log(1 + exp(x)) instead of max(x + margin, 0)")
    memory_size: int = setting(
        0, "cross-batch memory (XBM): embeddings of earlier steps mined with the batch; 0: off"
    )
    memory_start: int = setting(0, "the training step from which the memory is mined")


@dataclass
class EasyPositiveMiningConfig(MiningConfig):
    """Each anchor's nearest positive, with a semi-hard or the hardest negative."""

    strategy: str = "easy_positive"
    negatives: str = setting("semi_hard", "semi_hard or hard: the negative for each anchor")


@dataclass
class DistanceWeightedMiningConfig(MiningConfig):
    """One negative per positive pair, drawn with probability ∝ min(λ, 1/q(d))."""

    strategy: str = "distance_weighted"
    cutoff: float = setting(0.5, "distances below it weigh as much as it (the clip λ)")
    nonzero_loss_cutoff: float = setting(1.4, "negatives at or beyond it are never drawn")


@dataclass
class SamplerConfig:
    name: str = setting(MISSING, "the batch sampler, chosen with sampler=<name>")


@dataclass
class RandomSamplerConfig(SamplerConfig):
    """Shuffled batches of trainer.batch_size images."""

    name: str = "random"


@dataclass
class PKSamplerConfig(SamplerConfig):
    """P classes x K images per batch (trainer.batch_size is not used)."""

    name: str = "pk"
    classes_per_batch: int = setting(8, "P: classes in each batch (at least 2)")
    images_per_class: int = setting(8, "K: images of each class in each batch (at least 2)")


# --------------------------------------------------------------------------- trainer, eval


@dataclass
class TrainerConfig:
    epochs: int = setting(10, "epochs to train")
    batch_size: int = setting(
        64, "images per batch with the random sampler (at least 3); pk uses P * K"
    )
    learning_rate: float = setting(1e-3, "Adam's learning rate after the warm-up")
    warmup_epochs: float = setting(1.0, "linear warm-up from 0, in epochs (at most trainer.epochs)")
    schedule: str = setting("cosine", "constant, or cosine: decays to 0 after the warm-up")
    weight_decay: float = setting(0.0, "L2 on kernels, added as regularisation losses")
    augment: str = setting(
        "none", "translate: random shifts up to 10% of the image; flip_translate: and flips"
    )
    jit_compile: str = setting("auto", "XLA; auto: on for GPU, off for CPU")
    mixed_precision: str = setting(
        "auto", "auto: bfloat16 where the hardware has bf16 matrix units, else off"
    )
    deterministic: bool = setting(False, "tf.config.experimental.enable_op_determinism")
    progress: str = setting("auto", "auto: a progress bar on a terminal, else log lines")
    threads: int = setting(0, "TensorFlow intra-op threads; 0: TensorFlow's default (all cores)")
    checkpoint_every: int = setting(1, "save a checkpoint every N epochs")
    steps_per_epoch: int | None = setting(None, "cap an epoch at N batches; null: the whole split")
    collapse_patience: int = setting(2, "epochs a collapse must last before the run stops")
    resume: str = setting(
        "auto",
        "a rerun into a folder holding a run: auto resumes only when the config is the same "
        "(apart from RESUME_NEUTRAL_KEYS), never refuses to touch it, force resumes anyway",
    )


@dataclass
class EvalConfig:
    every: int = setting(1, "evaluate every N epochs (and always after the last)")
    # Evaluations before the last epoch rank a fixed random sample of this many test queries
    # against the whole test split and skip k-NN (an unbiased estimate, far cheaper); the
    # last epoch, and every full_every-th, evaluate fully.
    sample_queries: int | None = setting(
        2000,
        "evaluations before the last rank a fixed random sample of N test queries and skip "
        "k-NN; null: every evaluation is full",
    )
    full_every: int = setting(0, "N > 0: a full evaluation every N epochs too; 0: only the last")
    batch_size: int = setting(1024, "images per batch when embedding for evaluation")
    knn_k: int = setting(10, "neighbours that vote in knn_accuracy")
    max_points: int = setting(2000, "embeddings in the projector and the 2-D plot")
    chunk_size: int = setting(1024, "queries per chunk in the retrieval metrics")


@dataclass
class DistributeConfig:
    """``distribute=none|mirrored|multi_worker`` (:mod:`tripletlab.distribute`)."""

    name: str = setting(
        "none", "how training is replicated (tf.distribute), chosen with distribute=<name>"
    )
    cpu_devices: int = setting(
        0, "N > 0: split the CPU into N logical devices (mirrored without GPUs)"
    )


@dataclass
class LoggerConfig:
    """``logger=none|mlflow``: where a run reports besides its folder and TensorBoard
    (:mod:`tripletlab.tracking`)."""

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
class Config:
    """The whole config. The groups are typed by their base schema; the option chosen in
    ``conf/config.yaml``'s defaults list (or on the command line) brings its own."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distribute: DistributeConfig = field(default_factory=DistributeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = setting(42, "seeds the weights, the batches and the augmentation")
    optimized_metric: str = setting(
        "precision_at_1", "the metric run.py returns (to Optuna) and summaries rank by"
    )


# group -> option -> schema, stored as schema/<group>/<option>; "base" is the group's base
# schema (the type of its Config field), for options without keys of their own. The key
# naming an option in each group:
NAME_KEYS = {
    "dataset": "name",
    "model": "name",
    "mining": "strategy",
    "sampler": "name",
    "distribute": "name",
    "logger": "name",
}
SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {
        "base": DatasetConfig,
        "fashion_mnist": FashionMnistConfig,
        "mnist": MnistConfig,
        "digits": DigitsConfig,
        "image_folder": ImageFolderConfig,
        "cub200": Cub200Config,
        "cars196": Cars196Config,
        "sop": SopConfig,
        "inshop": InShopConfig,
    },
    "model": {
        "base": ModelConfig,
        "lenet": LeNetConfig,
        "small_cnn": SmallCnnConfig,
        "vgg_gap": VggGapConfig,
        "resnet50": ResNet50Config,
        "efficientnetv2_b0": EfficientNetV2B0Config,
        "mobilenetv3_small": MobileNetV3SmallConfig,
    },
    "mining": {
        "base": MiningConfig,
        "easy_positive": EasyPositiveMiningConfig,
        "distance_weighted": DistanceWeightedMiningConfig,
    },
    "sampler": {"base": SamplerConfig, "random": RandomSamplerConfig, "pk": PKSamplerConfig},
    "distribute": {"base": DistributeConfig},
    "logger": {"base": LoggerConfig, "mlflow": MlflowLoggerConfig},
}


def register_schema(group: str, name: str, schema: type) -> None:
    """Give option ``name`` of ``group`` its own keys: ``schema`` subclasses the group's base
    schema; the option's YAML selects it with ``- /schema/<group>/<name>@_here_``."""
    base = SCHEMAS[group]["base"]
    if not (isinstance(schema, type) and issubclass(schema, base)):
        raise TypeError(f"the schema of {group}={name} must subclass {base.__name__}")
    SCHEMAS[group][name] = schema


def schema_for(group: str, name: Any) -> type:
    """The schema of option ``name`` of ``group`` (the base schema if it has none)."""
    table = SCHEMAS[group]
    return table.get(str(name), table["base"])


def schema_default(group: str, name: Any, key: str) -> Any:
    """The default of ``key`` in option ``name``'s schema; None if it has none (or no key)."""
    for f in dataclasses.fields(schema_for(group, name)):
        if f.name == key:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return None if f.default in (dataclasses.MISSING, MISSING) else f.default
    return None


def register_configs() -> None:
    """Register the schemas; ``conf/config.yaml`` lists ``config_schema`` first in its
    defaults, and each option's YAML its own ``/schema/<group>/<option>``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, table in SCHEMAS.items():
        for name, schema in table.items():
            if name != "base":  # the Config field's type already: nothing to select
                cs.store(group=f"schema/{group}", name=name, node=schema)


def typed(data: Mapping | DictConfig) -> DictConfig:
    """A plain config (a run's saved ``config.yaml``) typed by :class:`Config` and each
    group's option schema, as if composed.

    Keys of other options of the same group are dropped: runs saved before the schemas
    were split per option hold every dataset's keys, which had no effect.
    """
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data)
    if not isinstance(data, Mapping):
        raise ValueError(f"a config is a mapping of keys, not a {type(data).__name__}")
    data = dict(data)
    cfg = OmegaConf.structured(Config)
    for group, table in SCHEMAS.items():
        node = data.get(group)
        if not isinstance(node, Mapping):
            continue
        schema = schema_for(group, node.get(NAME_KEYS[group]))
        own = {f.name for f in dataclasses.fields(schema)}
        others = {f.name for s in table.values() for f in dataclasses.fields(s)} - own
        data[group] = {k: v for k, v in node.items() if k not in others}
        cfg[group] = OmegaConf.structured(schema)
    return OmegaConf.merge(cfg, data)  # type: ignore[return-value]


def explain_compose_error(exc: BaseException) -> str | None:
    """A key that its node's schema lacks, found in ``exc`` or its causes (Hydra wraps
    OmegaConf's "Key 'root' not in 'DigitsConfig'"), as a message naming the valid keys;
    None for any other error."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConfigAttributeError, ConfigKeyError)) and "not in" in str(exc):
            schema, key = getattr(exc, "object_type", None), getattr(exc, "full_key", None)
            if dataclasses.is_dataclass(schema) and key:
                return unknown_key_message(str(key), schema)
        exc = exc.__cause__ or exc.__context__
    return None


def unknown_key_message(key: str, schema: type) -> str:
    """``dataset.root is not a key of dataset=digits; its keys: name, image_size, ...``."""
    keys = ", ".join(f.name for f in dataclasses.fields(schema))
    return f"{key} is not a key of {_where(key, schema)}; its keys: {keys}"


def _where(key: str, schema: type | None) -> str:
    """The node holding ``key``, named as the user chose it: ``dataset=digits``, ``trainer``."""
    parent = key.rpartition(".")[0]
    options = [n for n, s in SCHEMAS.get(parent, {}).items() if s is schema and n != "base"]
    return f"{parent}={options[0]}" if options else parent or "the config"


def _check_missing(cfg: DictConfig) -> None:
    """A ``???`` left unset (``dataset.root`` of image_folder) fails here, not mid-run."""
    for key in sorted(OmegaConf.missing_keys(cfg)):
        if key != "hydra" and not key.startswith("hydra."):
            parent = OmegaConf.select(cfg, key.rpartition(".")[0]) if "." in key else cfg
            schema = OmegaConf.get_type(parent)
            raise ConfigError(
                f"{key} must be set: {_where(key, schema)} has no default for it (add {key}=...)"
            )


def _check_keys(node: Any, path: str = "") -> None:
    """Every key is one of its schema's: Hydra's ``+key=value`` adds keys past the schema."""
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    own = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key, value in node.items_ex(resolve=False):
        if key == "hydra" and not path:
            continue
        full = f"{path}{key}"
        if own is not None and key not in own:
            raise ConfigError(unknown_key_message(full, schema))
        _check_keys(value, full + ".")


# --------------------------------------------------------------------------- value checks


def _choice(path: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = str(value)
    if text in ("True", "False"):  # a YAML/override bool stored in a str field
        text = text.lower()
    if text not in allowed:
        raise ConfigError(f"{path}={value!r} is not valid; choose one of: {', '.join(allowed)}")
    return text


def _lookup(cfg: Any, path: str) -> Any:
    """The value at dotted ``path`` in a DictConfig or a Config; None where the chosen
    option has no such key."""
    node = cfg
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _positive(path: str, value: Any, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{path}={value!r} is not valid; it must be {bound}")


def _option_schema(group: str, node: Any) -> None:
    """The node's schema is its option's: ``model=lenet model.name=small_cnn`` would build
    a small_cnn without its keys."""
    name = getattr(node, NAME_KEYS[group])
    expected = schema_for(group, name)
    actual = OmegaConf.get_type(node) if isinstance(node, DictConfig) else type(node)
    if actual is not None and actual is not dict and actual is not expected:
        raise ConfigError(
            f"{group}.{NAME_KEYS[group]}={name!r} does not match the {group} option's keys "
            f"({actual.__name__}); choose the option instead: {group}={name}"
        )


def validate(cfg: DictConfig | Config) -> None:
    """Check values that the types cannot; raise ConfigError with the key and the fix."""
    c = cfg
    if isinstance(c, DictConfig):
        _check_keys(c)
        _check_missing(c)
    refuse_secrets(config_strings(c if isinstance(c, DictConfig) else dataclasses.asdict(c)))
    dataset, model, sampler = c.dataset, c.model, c.sampler
    registry.DATASETS.check(dataset.name)
    registry.BACKBONES.check(model.name)
    registry.LOSSES.check(c.mining.strategy)
    registry.SAMPLERS.check(sampler.name)
    registry.TRACKERS.check(c.logger.name)
    registry.DISTRIBUTIONS.check(c.distribute.name)
    for group in ("dataset", "model", "sampler", "mining"):
        _option_schema(group, getattr(c, group))
    for path, allowed in CHOICES.items():
        value = _lookup(c, path)  # None: a key the chosen option does not have
        if value is not None:
            if path == "trainer.mixed_precision":
                value = normalize_precision(value)
            _choice(path, value, allowed)
    _option_schema("logger", c.logger)
    if dataset.channels is not None and dataset.channels not in CHANNELS:
        raise ConfigError(f"dataset.channels={dataset.channels!r} is not valid; use 1, 3 or null")
    for path in FRACTION_KEYS:
        value = _lookup(c, path)
        if value is not None and not 0.0 < value < 1.0:
            raise ConfigError(f"{path}={value!r} is not valid; it must be between 0 and 1")
    for path in POSITIVE_KEYS:
        if not (path == "mining.margin" and c.mining.soft_margin):
            _positive(path, _lookup(c, path))
    for path in NON_NEGATIVE_KEYS:
        _positive(path, _lookup(c, path), allow_zero=True)
    for key in ("train_classes", "val_classes"):
        if getattr(dataset, key, None) is not None and dataset.split != "classes":
            raise ConfigError(
                f"dataset.{key} is set but dataset.split={dataset.split}: add dataset.split=classes"
            )
    if c.trainer.warmup_epochs > c.trainer.epochs:
        raise ConfigError(
            f"trainer.warmup_epochs={c.trainer.warmup_epochs} is not valid; it must be <= "
            f"trainer.epochs={c.trainer.epochs}"
        )
    if sampler.name == "pk":
        for key, role in (
            ("classes_per_batch", "a negative from another class"),
            ("images_per_class", "a positive from the same class"),
        ):
            value = getattr(sampler, key)
            if value < 2:
                raise ConfigError(
                    f"sampler.{key}={value} is not valid; it must be >= 2 with the pk "
                    f"sampler: a triplet needs {role}"
                )
    if c.mining.strategy == "distance_weighted":
        _check_distance_weighted(c)
    if sampler.name == "random" and c.trainer.batch_size < 3:
        raise ConfigError(
            f"trainer.batch_size={c.trainer.batch_size} is not valid; it must be >= 3 to form "
            "a triplet"
        )


def _check_distance_weighted(c: Any) -> None:
    """Its weights are the density of distances between unit vectors (euclidean)."""
    if not c.model.l2_normalize:
        raise ConfigError(
            "mining=distance_weighted needs L2-normalised embeddings: set "
            "model.l2_normalize=true (its weights are the density of distances on the unit "
            "sphere)"
        )
    if c.mining.squared:
        raise ConfigError(
            "mining=distance_weighted samples by euclidean distances: set mining.squared=false"
        )
    if not 0 < c.mining.cutoff < c.mining.nonzero_loss_cutoff <= 2:
        raise ConfigError(
            f"mining.cutoff={c.mining.cutoff} and mining.nonzero_loss_cutoff="
            f"{c.mining.nonzero_loss_cutoff} are not valid; they need 0 < cutoff < "
            "nonzero_loss_cutoff <= 2 (distances between unit vectors are at most 2)"
        )


def override_key(line: str) -> str:
    """What a Hydra override line sets: ``model=lenet``, ``+model=lenet`` and
    ``++model=lenet`` -> ``model``; a deletion ``~model`` and another package ``model@x=lenet``
    keep their marks (``~model``, ``model@x``), as they set other things."""
    return re.sub(r"^\+{1,2}", "", str(line)).split("=", 1)[0].strip()


def to_container(cfg: Any) -> dict | None:
    """A config as plain, resolved data (as the run summary records it): a DictConfig, a
    dataclass (:class:`Config`) or a mapping; None for any other object."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    return None
