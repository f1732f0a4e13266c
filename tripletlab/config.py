"""Typed configuration: the top-level schema, registered in Hydra's ConfigStore, and the
generic checks.

Each group's schemas live with its options (:mod:`tripletlab.options`, and plugins); the
registries (:mod:`tripletlab.registry`) say which schema each option has. An option's YAML
starts with ``- /schema/<group>/<option>@_here_``, so the composed node is typed by its
option's schema and ``dataset=digits dataset.root=/x`` fails at composition (digits has no
root). :func:`validate` checks what types cannot, from the schemas themselves: each
field's ``choices`` and ``bound`` (:func:`tripletlab.options.setting`) and each schema's
``check`` method; it never branches on an option's name. This module is imported when
Hydra composes, so it never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from tripletlab.compose_errors import unknown_key_message, where
from tripletlab.credentials import config_strings, refuse_secrets
from tripletlab.errors import ConfigError
from tripletlab.options import check_value, metadata, setting
from tripletlab.options.dataset import DatasetConfig
from tripletlab.options.distribute import DistributeConfig
from tripletlab.options.logger import LoggerConfig
from tripletlab.options.mining import MiningConfig
from tripletlab.options.model import ModelConfig
from tripletlab.options.sampler import SamplerConfig
from tripletlab.registry import REGISTRIES, describe
from tripletlab.runtime import normalize_precision

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
# The k of each recall_at_k that evaluation reports (tripletlab.metrics' default).
RECALL_KS = (1, 2, 4, 8)
# The retrieval metrics of a run (its metrics rows and summary), in order.
METRICS = (
    "precision_at_1",
    *(f"recall_at_{k}" for k in RECALL_KS),
    "map_at_r",
    "knn_accuracy",
)


@dataclass
class TrainerConfig:
    epochs: int = setting(10, "epochs to train", bound=">0")
    batch_size: int = setting(
        64, "images per batch with the random sampler (at least 3); pk uses P * K", bound=">0"
    )
    learning_rate: float = setting(1e-3, "Adam's learning rate after the warm-up", bound=">0")
    warmup_epochs: float = setting(
        1.0, "linear warm-up from 0, in epochs (at most trainer.epochs)", bound=">=0"
    )
    schedule: str = setting(
        "cosine",
        "constant, or cosine: decays to 0 after the warm-up",
        choices=("constant", "cosine"),
    )
    weight_decay: float = setting(0.0, "L2 on kernels, added as regularisation losses", bound=">=0")
    augment: str = setting(
        "none",
        "translate: random shifts up to 10% of the image; flip_translate: and flips",
        choices=("none", "translate", "flip_translate"),
    )
    jit_compile: str = setting(
        "auto", "XLA; auto: on for GPU, off for CPU", choices=("auto", "true", "false")
    )
    mixed_precision: str = setting(
        "auto",
        "auto: bfloat16 where the hardware has bf16 matrix units, else off",
        choices=("auto", "off", "float16", "bfloat16"),
    )
    deterministic: bool = setting(False, "tf.config.experimental.enable_op_determinism")
    progress: str = setting(
        "auto", "auto: a progress bar on a terminal, else log lines", choices=("auto", "bar", "log")
    )
    threads: int = setting(
        0, "TensorFlow intra-op threads; 0: TensorFlow's default (all cores)", bound=">=0"
    )
    checkpoint_every: int = setting(1, "save a checkpoint every N epochs", bound=">0")
    steps_per_epoch: int | None = setting(
        None, "cap an epoch at N batches; null: the whole split", bound=">0"
    )
    collapse_patience: int = setting(
        2, "epochs a collapse must last before the run stops", bound=">=0"
    )
    resume: str = setting(
        "auto",
        "a rerun into a folder holding a run: auto resumes only when the config is the same "
        "(apart from RESUME_NEUTRAL_KEYS), never refuses to touch it, force resumes anyway",
        choices=("auto", "never", "force"),
    )

    def check(self, cfg: Any) -> None:
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"trainer.warmup_epochs={self.warmup_epochs} is not valid; it must be <= "
                f"trainer.epochs={self.epochs}"
            )


@dataclass
class EvalConfig:
    every: int = setting(1, "evaluate every N epochs (and always after the last)", bound=">0")
    # Evaluations before the last epoch rank a fixed random sample of this many test queries
    # against the whole test split and skip k-NN (an unbiased estimate, far cheaper); the
    # last epoch, and every full_every-th, evaluate fully.
    sample_queries: int | None = setting(
        2000,
        "evaluations before the last rank a fixed random sample of N test queries and skip "
        "k-NN; null: every evaluation is full",
        bound=">0",
    )
    full_every: int = setting(
        0, "N > 0: a full evaluation every N epochs too; 0: only the last", bound=">=0"
    )
    batch_size: int = setting(1024, "images per batch when embedding for evaluation", bound=">0")
    knn_k: int = setting(10, "neighbours that vote in knn_accuracy", bound=">0")
    max_points: int = setting(2000, "embeddings in the projector and the 2-D plot", bound=">=0")
    chunk_size: int = setting(1024, "queries per chunk in the retrieval metrics", bound=">0")


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
        "precision_at_1",
        "the metric run.py returns (to Optuna) and summaries rank by",
        choices=METRICS,
    )


def schema_default(group: str, name: Any, key: str) -> Any:
    """The default of ``key`` in option ``name``'s schema; None if it has none (or no key)."""
    for f in dataclasses.fields(REGISTRIES[group].schema(name)):
        if f.name == key:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return None if f.default in (dataclasses.MISSING, MISSING) else f.default
    return None


def register_configs() -> None:
    """Register the schemas: ``conf/config.yaml`` lists ``config_schema`` first in its
    defaults, each option's YAML its own ``/schema/<group>/<option>`` (plugins' too)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, registry in REGISTRIES.items():
        for name, schema in registry.schemas().items():
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
    for group, registry in REGISTRIES.items():
        node = data.get(group)
        if not isinstance(node, Mapping):
            continue
        schema = registry.schema(node.get(registry.name_key))
        own = {f.name for f in dataclasses.fields(schema)}
        every = {f.name for s in registry.schemas().values() for f in dataclasses.fields(s)}
        data[group] = {k: v for k, v in node.items() if k in own or k not in every}
        cfg[group] = OmegaConf.structured(schema)
    return OmegaConf.merge(cfg, data)  # type: ignore[return-value]


# --------------------------------------------------------------------------- checks


def _check_missing(cfg: DictConfig) -> None:
    """A ``???`` left unset (``dataset.root`` of image_folder) fails here, not mid-run."""
    for key in sorted(OmegaConf.missing_keys(cfg)):
        if key != "hydra" and not key.startswith("hydra."):
            parent = OmegaConf.select(cfg, key.rpartition(".")[0]) if "." in key else cfg
            schema = OmegaConf.get_type(parent)
            raise ConfigError(
                f"{key} must be set: {where(key, schema)} has no default for it (add {key}=...)"
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


def check_node(node: Any, schema: type, path: str, cfg: Any) -> None:
    """Every field's choices and bound, then the ``check`` of each class of the schema that
    defines one, the base class's first (so a subclass's ``check`` never calls super())."""
    for f in dataclasses.fields(schema):
        meta = metadata(schema, f.name)
        if meta.keys() & {"choices", "bound"} and not _is_missing(node, f.name):
            value = getattr(node, f.name, None)
            if path + f.name == "trainer.mixed_precision" and value is not None:
                value = normalize_precision(value)
            check_value(path + f.name, value, meta)
    for cls in reversed(schema.__mro__):
        if "check" in vars(cls):
            try:
                vars(cls)["check"](node, cfg)
            except KeyboardInterrupt:
                raise
            except BaseException as err:  # a plugin's check failing (sys.exit too): one line
                if isinstance(err, ConfigError) or cls.__module__.startswith("tripletlab."):
                    raise
                where = f"{path.rstrip('.')}: the check of {cls.__module__}.{cls.__qualname__}"
                raise ConfigError(f"{where} failed ({describe(err)})") from None


def _is_missing(node: Any, key: str) -> bool:
    return isinstance(node, DictConfig) and OmegaConf.is_missing(node, key)


def _option_schema(group: str, node: Any) -> type:
    """The option's schema, which the node must have: ``model=lenet model.name=small_cnn``
    would build a small_cnn without its keys."""
    registry = REGISTRIES[group]
    name = registry.check(getattr(node, registry.name_key))
    expected = registry.schema(name)
    actual = OmegaConf.get_type(node) if isinstance(node, DictConfig) else type(node)
    if actual is not None and actual is not dict and actual is not expected:
        raise ConfigError(
            f"{registry.key}={name!r} does not match the {group} option's keys "
            f"({actual.__name__}); choose the option instead: {group}={name}"
        )
    return expected


def validate(cfg: DictConfig | Config) -> None:
    """Check values that the types cannot; raise ConfigError with the key and the fix."""
    if isinstance(cfg, DictConfig):
        _check_keys(cfg)
        _check_missing(cfg)
        refuse_secrets(config_strings(cfg))
    else:
        refuse_secrets(config_strings(dataclasses.asdict(cfg)))
    schemas = {group: _option_schema(group, getattr(cfg, group)) for group in REGISTRIES}
    schemas.update(trainer=TrainerConfig, eval=EvalConfig)
    for group, schema in schemas.items():
        check_node(getattr(cfg, group), schema, f"{group}.", cfg)
    check_node(cfg, Config, "", cfg)


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
