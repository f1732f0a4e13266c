"""One registry per kind of option: an entry is the whole option.

Each registry below names its config key and the entry point group plugins add options
through; the package's own options are declared in ``tripletlab.options.<group>``:

- ``DATASETS``: ``dataset.name``, ``tripletlab.datasets``;
- ``BACKBONES``: ``model.name``, ``tripletlab.backbones``;
- ``STRATEGIES``: ``mining.strategy``, ``tripletlab.strategies``;
- ``SAMPLERS``: ``sampler.name``, ``tripletlab.samplers``;
- ``TRACKERS``: ``logger.name``, ``tripletlab.trackers``;
- ``DISTRIBUTIONS``: ``distribute.name``, ``tripletlab.distributions``.

An :class:`Option` gives in one place: the name, the config schema (a dataclass subclassing
the group's base schema, fields made with :func:`tripletlab.options.setting`; its ``check``
method is the option's own validation, run by :func:`tripletlab.config.validate`), the
implementation (an object, or ``"module:attr"`` imported on first :meth:`Registry.get`) and
the hooks the rest of the code asks for (:class:`Strategy` adds a strategy's). Declarations
import no TensorFlow, so composing a config and ``--help`` stay fast; the code behind an
option is imported when a run needs it.

The valid names are the declared options, the options of ``conf/<group>/`` and the
installed plugins' entry points (``[project.entry-points."tripletlab.strategies"]
random_hard = "my_pkg.random_hard:STRATEGY"``, whose value is an :class:`Option`). A plugin
ships its YAML through a ``hydra_plugins`` SearchPathPlugin (docs/extending.md). Nothing
else in tripletlab branches on an option's name.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tripletlab.errors import ConfigError

T = TypeVar("T")


def load_target(target: Any, what: str) -> Any:
    """``"package.module:attr"`` imported (ConfigError naming ``what`` when it fails); any
    other object as it is."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"{what}: cannot import {target!r} ({type(err).__name__}: {err})"
        ) from None
    return obj


def describe(err: BaseException) -> str:
    """``Type: message`` of an exception from someone else's code, on one line (its message's
    lines joined), even when its ``__str__`` raises."""
    try:
        message = " ".join(str(err).split())
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the error
        message = "(its message cannot be printed)"
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


@dataclass(frozen=True)
class Option:
    """One option of a group.

    ``schema``: its config dataclass (a subclass of the group's base schema; None: the base
    schema, for an option without keys of its own). ``target``: the implementation, or
    ``"module:attr"`` imported on first use; None: the implementation is attached with
    :meth:`Registry.register` by the registry's home module. ``plugin``: the distribution
    that installed it (set by the registry, for messages).
    """

    name: str
    schema: type | None = None
    target: Any = None
    plugin: str | None = None


@dataclass(frozen=True)
class Strategy(Option):
    """A mining strategy. ``target``: ``(labels [B], embeddings [B, D], margin, squared,
    soft_margin, *, memory, engine, jit_compile, **own keys, **step inputs) -> (loss [],
    fraction [])``.

    ``step_inputs``: what the train step passes each step besides the config's keys:
    ``"memory"`` (a cross-batch memory, ``(labels [M], embeddings [M, D])``; without it
    ``mining.memory_size`` must be 0) and ``"seed"`` (an int64 [2] tensor, (config seed,
    step): a sampled strategy draws the same after a resume). ``unit_vectors``: needs
    L2-normalised embeddings (``model.l2_normalize=true``). ``reference``: its brute force for tests and ``bench losses``, ``(d [B, N], labels [B],
    column labels [N], **own keys) -> [(a, p, n), ...]``, the triplets it counts, picked
    straight from the definition in numpy float64 (None: it has none, e.g. a sampled
    strategy); :mod:`tripletlab.losses.reference` reduces them. ``averages_active``: the
    hinge loss is the mean over the counted triplets with a positive hinge (batch-all), not
    over all of them. ``keras_class``: the name of its Keras loss class
    (:mod:`tripletlab.losses.keras`; default ``Triplet<CamelName>Loss``).
    """

    step_inputs: tuple[str, ...] = ("memory",)
    unit_vectors: bool = False
    reference: Any = None
    averages_active: bool = False
    keras_class: str | None = None

    @property
    def class_name(self) -> str:
        """Its Keras loss class: ``TripletEasyPositiveLoss`` for easy_positive, unless
        ``keras_class`` names it."""
        camel = "".join(part.capitalize() for part in self.name.split("_"))
        return self.keras_class or f"Triplet{camel}Loss"


class Registry:
    """Names -> options of one group (like TensorFlow Similarity's lookup tables).

    ``label``: the registry's name here; ``key``: the config key naming an option;
    ``group``: the config group; ``declarations``: the module declaring the package's own
    options (no TensorFlow); ``home``: the module whose import attaches the implementations
    of options declared without a target; ``base``: ``"module:attr"`` of the group's base
    schema; ``kind``: the entry type plugins must give.
    """

    def __init__(
        self,
        label: str,
        key: str,
        group: str,
        declarations: str,
        home: str,
        base: str,
        kind: type[Option] = Option,
    ):
        self.label, self.key, self.group = label, key, group
        self.declarations, self.home, self._base, self.kind = declarations, home, base, kind
        self.entry_point_group = f"tripletlab.{label.lower()}"
        self._options: dict[str, Option] = {}
        self._code: dict[str, Any] = {}
        self._loaded = False
        self._plugins: dict[str, Any] | None = None  # entry point name -> EntryPoint

    def __repr__(self) -> str:
        return f"<Registry {self.label} ({self.key}): {', '.join(self.names())}>"

    # ---------------------------------------------------------------- declaring

    @property
    def base(self) -> type:
        """The group's base schema (every option's schema subclasses it)."""
        return load_target(self._base, f"{self.label}'s base schema")

    @property
    def name_key(self) -> str:
        """The key naming the option inside its group's node: ``name`` or ``strategy``."""
        return self.key.rpartition(".")[2]

    def add(self, option: Option, source: str = "tripletlab") -> Option:
        """Declare ``option``; ConfigError naming ``source`` if its name is taken or its
        schema does not fit the group."""
        if not isinstance(option, self.kind):
            raise ConfigError(
                f"{source} gives {self.entry_point_group} a {type(option).__name__}; it must "
                f"be a tripletlab.registry.{self.kind.__name__}"
            )
        taken = self._options.get(option.name)
        if taken is not None and taken != option:
            owner = taken.plugin or "tripletlab"
            raise ConfigError(
                f"{source} registers {self.key}={option.name!r}, which {owner} registers "
                "already; rename one of them"
            )
        if isinstance(option, Strategy):
            _check_strategy(option, source)
            for other in self._options.values():
                # one Keras class name, one strategy: else the second would replace the first
                # in tripletlab.losses.keras and in Keras' registry (a saved model's loss)
                if other.name != option.name and other.class_name == option.class_name:
                    raise ConfigError(
                        f"{source}: the Keras loss class of {self.key}={option.name!r} would "
                        f"be {option.class_name}, the class of {other.plugin or 'tripletlab'}'s "
                        f"{self.key}={other.name!r}; rename it or set its keras_class"
                    )
        schema = option.schema
        if schema is not None:
            base = self.base
            if not (dataclasses.is_dataclass(schema) and issubclass(schema, base)):
                raise ConfigError(
                    f"{source}: the schema of {self.group}={option.name} must be a dataclass "
                    f"subclassing {base.__module__}.{base.__name__}"
                )
            default = {f.name: f.default for f in dataclasses.fields(schema)}[self.name_key]
            if default != option.name:
                raise ConfigError(
                    f"{source}: the schema of {self.group}={option.name} must default "
                    f"{self.name_key} to {option.name!r}, not {default!r}"
                )
            if option.plugin is not None:  # the package's own are tested
                _check_structured(schema, f"{source}: the schema of {self.group}={option.name}")
        self._options[option.name] = option
        return option

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` attaches an implementation to ``name``
        (an option with the base schema unless ``name`` is declared, before or after)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"register() takes the name as a non-empty str, got {name!r}")

        def attach(obj: T) -> T:
            if self._code.get(name, obj) is not obj:
                raise ValueError(f"{self.key}={name!r} is registered already")
            self._code[name] = obj
            return obj

        return attach

    def unregister(self, name: str) -> None:
        """Forget ``name`` (declared or registered at run time, e.g. in a test)."""
        self._code.pop(name, None)
        self._options.pop(name, None)

    # ---------------------------------------------------------------- plugins

    def _entry_points(self) -> dict[str, Any]:
        if self._plugins is None:
            from importlib.metadata import entry_points

            plugins: dict[str, Any] = {}
            for ep in entry_points(group=self.entry_point_group):
                taken = plugins.get(ep.name)
                if taken is not None and taken.value != ep.value:
                    # importlib keeps both; a dict would keep the last one silently
                    raise ConfigError(
                        f"plugins {_dist(taken)} and {_dist(ep)} both register "
                        f"{self.key}={ep.name!r} ({self.entry_point_group}); uninstall or "
                        "rename one of them"
                    )
                plugins[ep.name] = ep
            self._plugins = plugins
        return self._plugins

    def _load_plugin(self, name: str) -> None:
        ep = self._entry_points()[name]
        dist = _dist(ep)
        source = f"plugin {dist} ({self.entry_point_group}: {ep.name} = {ep.value})"
        pattern = getattr(ep, "pattern", None)
        if pattern is not None and pattern.match(ep.value) is None:
            # ep.load() would fail with "'NoneType' object has no attribute 'group'"
            raise ConfigError(f"{source} is not 'package.module:attribute'; fix or uninstall it")
        try:
            option = ep.load()
        except KeyboardInterrupt:  # Ctrl-C while it imports: not the plugin's fault
            raise
        except BaseException as err:  # noqa: BLE001 - one message naming the plugin
            raise ConfigError(
                f"{source} failed to import: {describe(err)}; fix or uninstall it"
            ) from None
        if isinstance(option, Option) and option.name != ep.name:
            raise ConfigError(f"{source} gives the option {option.name!r}, not {ep.name!r}")
        if isinstance(option, Option):
            option = dataclasses.replace(option, plugin=dist)
        if self._options.get(name) == option:
            return
        self.add(option, source)

    def _load(self) -> None:
        """Import the package's declarations and every installed plugin (once)."""
        if self._loaded:
            return
        self._loaded = True  # first: a plugin that asks the registry at import sees it
        try:
            importlib.import_module(self.declarations)
            for name in self._entry_points():
                self._load_plugin(name)
        except BaseException:
            self._loaded = False  # asked again, the error comes again, never half a registry
            raise

    # ---------------------------------------------------------------- asking

    def options(self) -> tuple[str, ...]:
        """The options of ``conf/<group>/`` (sorted); none if the config folder is missing."""
        from tripletlab.resources import config_dir

        try:
            folder = config_dir() / self.group
        except ConfigError:
            return ()
        return tuple(sorted(p.stem for p in folder.glob("*.yaml")))

    def registered(self) -> tuple[str, ...]:
        """The declared names, in the order they were declared (the package's own first),
        then those that only have code attached (:meth:`register`)."""
        self._load()
        return tuple(self._options) + tuple(n for n in self._code if n not in self._options)

    def names(self) -> tuple[str, ...]:
        """Every valid name: conf/'s options, then the plugins' and run time's, sorted."""
        options = self.options()
        others = sorted(n for n in self.registered() if n not in options)
        return options + tuple(others)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def check(self, name: Any) -> str:
        """``name`` if valid, else ConfigError naming the valid ones; imports no TensorFlow."""
        if not isinstance(name, str) or name not in self:
            raise ConfigError(
                f"{self.key}={name!r} is not valid; choose one of: {', '.join(self.names())}"
            )
        return name

    def option(self, name: Any) -> Option:
        """The entry of ``name`` (ConfigError naming the valid ones)."""
        self._load()
        name = self.check(name)
        return self._options.get(name) or self.kind(name)

    def schema(self, name: Any) -> type:
        """The schema of ``name`` (the base schema for an unknown name or one without)."""
        self._load()
        option = self._options.get(str(name))
        return (option.schema if option else None) or self.base

    def schemas(self) -> dict[str, type]:
        """name -> schema of every declared option with keys of its own."""
        self._load()
        return {n: o.schema for n, o in self._options.items() if o.schema is not None}

    def own_keys(self, name: Any) -> tuple[str, ...]:
        """The keys of ``name``'s schema beyond the base schema's: its keyword arguments."""
        shared = {f.name for f in dataclasses.fields(self.base)}
        return tuple(f.name for f in dataclasses.fields(self.schema(name)) if f.name not in shared)

    def get(self, name_or_object: Any) -> Any:
        """The implementation of ``name_or_object``; a non-str passes through."""
        if not isinstance(name_or_object, str):
            return name_or_object
        option = self.option(name_or_object)
        name = option.name
        if option.target is not None:
            where = f"{option.plugin or 'tripletlab'}'s {self.key}={name!r}"
            code = load_target(option.target, where)
            if isinstance(option, Strategy) and not callable(code):  # "module:attr" named
                raise ConfigError(f"{where}: its target {option.target!r} is not a function")
            return code
        if name not in self._code:
            importlib.import_module(self.home)  # attaches the package's own on import
        if name not in self._code:
            raise ConfigError(
                f"{self.key}={name!r} has no implementation: conf/{self.group}/{name}.yaml "
                f"names it, but no code was registered with @{self.label}.register({name!r}) "
                "(import the module that defines it first)"
            )
        return self._code[name]


STEP_INPUTS = ("memory", "seed")


def _check_strategy(option: Strategy, source: str) -> None:
    """ConfigError naming ``source`` unless ``option``'s hooks are ones the train step
    knows (a step input it does not pass would be a TypeError while the step is traced) and
    its target, given as an object, is a function."""
    inputs = option.step_inputs
    if isinstance(inputs, str) or not all(i in STEP_INPUTS for i in inputs):
        raise ConfigError(
            f"{source}: the step_inputs of mining.strategy={option.name!r} must be a tuple of "
            f"{', '.join(map(repr, STEP_INPUTS))}, not {inputs!r}"
        )
    target = option.target
    if target is not None and not isinstance(target, str) and not callable(target):
        raise ConfigError(
            f"{source}: the target of mining.strategy={option.name!r} must be a function or "
            f"'package.module:function', not {type(target).__name__}"
        )


def _check_structured(schema: type, what: str) -> None:
    """ConfigError naming ``what`` unless OmegaConf can make ``schema`` a config (a field
    typed ``set`` or ``object``, a default of the wrong type, cannot), as Hydra's
    ConfigStore will when the configs are registered."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.structured(schema)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{what} is not a valid config: {describe(err)}") from None


def _dist(ep: Any) -> str:
    """The distribution that installed entry point ``ep`` (its module if unknown)."""
    return getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0]


def _registry(label: str, key: str, group: str, home: str, base: str, **kwargs: Any) -> Registry:
    module = f"tripletlab.options.{group}"
    return Registry(label, key, group, module, home, f"{module}:{base}", **kwargs)


DATASETS = _registry("DATASETS", "dataset.name", "dataset", "tripletlab.data", "DatasetConfig")
BACKBONES = _registry("BACKBONES", "model.name", "model", "tripletlab.models", "ModelConfig")
STRATEGIES = _registry(
    "STRATEGIES", "mining.strategy", "mining", "tripletlab.losses", "MiningConfig", kind=Strategy
)
SAMPLERS = _registry(
    "SAMPLERS", "sampler.name", "sampler", "tripletlab.data.samplers", "SamplerConfig"
)
TRACKERS = _registry("TRACKERS", "logger.name", "logger", "tripletlab.tracking", "LoggerConfig")
DISTRIBUTIONS = _registry(
    "DISTRIBUTIONS", "distribute.name", "distribute", "tripletlab.distribute", "DistributeConfig"
)
# group -> its registry: the config groups whose options are registered.
REGISTRIES: dict[str, Registry] = {
    r.group: r for r in (DATASETS, BACKBONES, STRATEGIES, SAMPLERS, DISTRIBUTIONS, TRACKERS)
}


def schema_for(group: str, name: Any) -> type:
    """The schema of option ``name`` of ``group`` (the group's base schema if it has none)."""
    return REGISTRIES[group].schema(name)
