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
DISTRIBUTE_STRATEGIES = ("none", "mirrored", "multi_worker")
LOGGERS = ("none", "mlflow")
METRICS = (
    "precision_at_1",
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "map_at_r",
    "knn_accuracy",
)

# The registries' names, read when asked for (a name registered at run time counts too).
_NAMES = {
    "DATASETS": registry.DATASETS,
    "MODELS": registry.BACKBONES,
    "STRATEGIES": registry.LOSSES,
    "SAMPLERS": registry.SAMPLERS,
}


def __getattr__(name: str) -> tuple[str, ...]:
    if name in _NAMES:
        return _NAMES[name].names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- dataset


@dataclass
class DatasetConfig:
    """The keys every dataset has; each option's schema below adds its own."""

    name: str = MISSING
    image_size: int | None = None  # resize to image_size x image_size; None keeps the native size
    channels: int | None = None  # 1 (grayscale) or 3 (RGB); None keeps the native channels
    split_seed: int = 0  # seeds the train/test split and max_train/max_test, whatever the seed
    max_train: int | None = None  # keep only N training images, picked at random (tiny runs)
    max_test: int | None = None
    # original: the dataset's own train/test split | classes: pool the splits, train on the
    # first half of the classes (or train_classes), test on the others (unseen classes)
    split: str = "original"
    train_classes: list[Any] | None = None  # class names or ids, with split=classes


@dataclass
class IdxDatasetConfig(DatasetConfig):
    """IDX files, found locally or downloaded (fashion_mnist, mnist)."""

    root: str | None = None  # folder with the files; None searches the usual places
    download: bool = True  # fall back to the official mirror when no local copy exists
    url: str | None = None  # mirror override (None: the official one)
    allow_insecure_url: bool = False  # allow an http:// or file:// url (no TLS: opt in)


@dataclass
class FashionMnistConfig(IdxDatasetConfig):
    name: str = "fashion_mnist"


@dataclass
class MnistConfig(IdxDatasetConfig):
    name: str = "mnist"


@dataclass
class DigitsConfig(DatasetConfig):
    name: str = "digits"
    test_fraction: float = 0.2  # share of each class held out for the test split


@dataclass
class FilesDatasetConfig(DatasetConfig):
    """Image files on disk (image_folder and the benchmark layouts)."""

    root: str | None = MISSING
    image_size: int | None = 224
    channels: int | None = 3
    # auto: stream from disk when decoding every image would take more than 1 GiB | true | false
    stream: str = "auto"
    verify: bool = True  # read every streamed file's header before training (names bad files)


@dataclass
class ImageFolderConfig(FilesDatasetConfig):
    name: str = "image_folder"
    root: str | None = MISSING  # root/<class>/*.png, or root/train/<class> and root/test/<class>
    image_size: int | None = 64
    channels: int | None = None
    test_fraction: float = 0.2  # without train/ and test/ sub-folders


@dataclass
class Cub200Config(FilesDatasetConfig):
    name: str = "cub200"
    root: str | None = MISSING  # the CUB_200_2011 folder (images.txt, images/, ...)
    split: str = "classes"  # classes 1-100 train, 101-200 test; original: train_test_split.txt


@dataclass
class Cars196Config(FilesDatasetConfig):
    name: str = "cars196"
    root: str | None = MISSING  # the folder with cars_annos.mat and car_ims/
    split: str = "classes"  # classes 1-98 train, 99-196 test; original: the test flag


@dataclass
class SopConfig(FilesDatasetConfig):
    name: str = "sop"
    root: str | None = MISSING  # Stanford_Online_Products (Ebay_train.txt, Ebay_test.txt, ...)


@dataclass
class InShopConfig(FilesDatasetConfig):
    name: str = "inshop"
    root: str | None = MISSING  # list_eval_partition.txt (or Eval/) and img/ (or Img/img/)


# --------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    """The keys every backbone has (a new backbone without keys of its own needs no more)."""

    name: str = MISSING
    embedding_size: int = 64
    l2_normalize: bool = True


@dataclass
class LeNetConfig(ModelConfig):
    name: str = "lenet"


@dataclass
class CnnConfig(ModelConfig):
    num_channels: int = 32  # channels of the first block
    batch_norm: bool = True


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
    weights: str = "imagenet"  # imagenet | none | path to a .weights.h5 file of the backbone
    freeze_batch_norm: bool = True  # batch norm layers keep ImageNet's statistics and scales


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
    """Every strategy takes the same keys, so the group has one schema."""

    strategy: str = MISSING
    margin: float = 0.2  # unused with soft_margin
    squared: bool = False  # squared euclidean distances
    soft_margin: bool = False  # log(1 + exp(x)) instead of max(x + margin, 0)


@dataclass
class SamplerConfig:
    name: str = MISSING


@dataclass
class RandomSamplerConfig(SamplerConfig):
    """Shuffled batches of trainer.batch_size images."""

    name: str = "random"


@dataclass
class PKSamplerConfig(SamplerConfig):
    """P classes x K images per batch (trainer.batch_size is not used)."""

    name: str = "pk"
    classes_per_batch: int = 8  # P
    images_per_class: int = 8  # K


# --------------------------------------------------------------------------- trainer, eval


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 64  # random sampler; pk uses P * K
    learning_rate: float = 1e-3
    warmup_epochs: float = 1.0  # linear warm-up from 0
    schedule: str = "cosine"  # constant | cosine (decays to 0 after warm-up)
    weight_decay: float = 0.0  # L2 on kernels, added as regularisation losses
    augment: str = "none"  # none | translate | flip_translate
    jit_compile: str = "auto"  # auto (on for GPU, off for CPU) | true | false
    # auto (bfloat16 where the hardware has bf16 matrix units, else off) | off | float16 | bfloat16
    mixed_precision: str = "auto"
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism
    progress: str = "auto"  # auto (bar on a terminal) | bar | log
    threads: int = 0  # TensorFlow intra-op threads; 0: TensorFlow's default (all cores)
    checkpoint_every: int = 1  # epochs
    steps_per_epoch: int | None = None  # cap an epoch at N batches; None: the whole split
    collapse_patience: int = 2  # epochs a collapse must last before the run stops
    # A rerun into a folder that holds a run: auto resumes only when the config is the same
    # (apart from RESUME_NEUTRAL_KEYS), never refuses to touch it, force resumes anyway.
    resume: str = "auto"


@dataclass
class EvalConfig:
    every: int = 1  # evaluate every N epochs (and always after the last)
    # Evaluations before the last epoch rank a fixed random sample of this many test queries
    # against the whole test split and skip k-NN (an unbiased estimate, far cheaper); the
    # last epoch, and every full_every-th, evaluate fully. null: every evaluation is full.
    sample_queries: int | None = 2000
    full_every: int = 0  # N > 0: a full evaluation every N epochs too; 0: only the last
    batch_size: int = 1024
    knn_k: int = 10
    max_points: int = 2000  # projector / PCA plot
    chunk_size: int = 1024  # queries per chunk in the retrieval metrics


@dataclass
class DistributeConfig:
    """``distribute=none|mirrored|multi_worker`` (:mod:`tripletlab.distribute`)."""

    name: str = "none"
    cpu_devices: int = 0  # N > 0: split the CPU into N logical devices (mirrored without GPUs)


@dataclass
class LoggerConfig:
    """``logger=none|mlflow``: where a run reports besides its folder and TensorBoard
    (:mod:`tripletlab.tracking`)."""

    name: str = "none"


@dataclass
class MlflowLoggerConfig(LoggerConfig):
    name: str = "mlflow"
    # null: $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db (artifacts in outputs/)
    tracking_uri: str | None = None
    experiment: str | None = None  # null: the sweep folder for a sweep's jobs, else tripletlab


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
    seed: int = 42
    optimized_metric: str = "precision_at_1"


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
    "mining": {"base": MiningConfig},
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
    for group in ("dataset", "model", "sampler"):
        _option_schema(group, getattr(c, group))
    _choice("trainer.schedule", c.trainer.schedule, SCHEDULES)
    _choice("trainer.augment", c.trainer.augment, AUGMENTATIONS)
    _choice("trainer.jit_compile", c.trainer.jit_compile, JIT_CHOICES)
    _choice("trainer.mixed_precision", normalize_precision(c.trainer.mixed_precision), PRECISIONS)
    _choice("trainer.progress", c.trainer.progress, PROGRESS)
    _choice("trainer.resume", c.trainer.resume, RESUME_MODES)
    _choice("optimized_metric", c.optimized_metric, METRICS)
    _choice("dataset.split", dataset.split, DATASET_SPLITS)
    if getattr(dataset, "stream", None) is not None:
        _choice("dataset.stream", dataset.stream, STREAM_CHOICES)
    if dataset.train_classes is not None and dataset.split != "classes":
        raise ConfigError(
            f"dataset.train_classes is set but dataset.split={dataset.split}: add "
            "dataset.split=classes"
        )
    _choice("distribute.name", c.distribute.name, DISTRIBUTE_STRATEGIES)
    _choice("logger.name", c.logger.name, LOGGERS)
    _option_schema("logger", c.logger)
    if dataset.channels not in (None, 1, 3):
        raise ConfigError(f"dataset.channels={dataset.channels!r} is not valid; use 1, 3 or null")
    test_fraction = getattr(dataset, "test_fraction", None)
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"dataset.test_fraction={test_fraction!r} is not valid; it must be between 0 and 1"
        )
    for path, value in (
        ("dataset.image_size", dataset.image_size),
        ("dataset.max_train", dataset.max_train),
        ("dataset.max_test", dataset.max_test),
        ("model.embedding_size", model.embedding_size),
        ("model.num_channels", getattr(model, "num_channels", None)),
        ("mining.margin", c.mining.margin if not c.mining.soft_margin else 1.0),
        ("sampler.classes_per_batch", getattr(sampler, "classes_per_batch", None)),
        ("sampler.images_per_class", getattr(sampler, "images_per_class", None)),
        ("trainer.epochs", c.trainer.epochs),
        ("trainer.batch_size", c.trainer.batch_size),
        ("trainer.learning_rate", c.trainer.learning_rate),
        ("trainer.checkpoint_every", c.trainer.checkpoint_every),
        ("trainer.steps_per_epoch", c.trainer.steps_per_epoch),
        ("eval.every", c.eval.every),
        ("eval.batch_size", c.eval.batch_size),
        ("eval.knn_k", c.eval.knn_k),
        ("eval.chunk_size", c.eval.chunk_size),
        ("eval.sample_queries", c.eval.sample_queries),
    ):
        _positive(path, value)
    for path, value in (
        ("trainer.warmup_epochs", c.trainer.warmup_epochs),
        ("trainer.weight_decay", c.trainer.weight_decay),
        ("trainer.collapse_patience", c.trainer.collapse_patience),
        ("trainer.threads", c.trainer.threads),
        ("eval.max_points", c.eval.max_points),
        ("eval.full_every", c.eval.full_every),
        ("distribute.cpu_devices", c.distribute.cpu_devices),
    ):
        _positive(path, value, allow_zero=True)
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
    if sampler.name == "random" and c.trainer.batch_size < 3:
        raise ConfigError(
            f"trainer.batch_size={c.trainer.batch_size} is not valid; it must be >= 3 to form "
            "a triplet"
        )


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
