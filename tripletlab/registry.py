"""One registry per kind: the names a config may choose, and the code each name runs.

=================  ===================  ================================  ==================
registry           config key           implementations live in           options in conf/
=================  ===================  ================================  ==================
``DATASETS``       ``dataset.name``     :mod:`tripletlab.data`            ``dataset/``
``BACKBONES``      ``model.name``       :mod:`tripletlab.models`          ``model/``
``LOSSES``         ``mining.strategy``  :mod:`tripletlab.losses`          ``mining/``
``SAMPLERS``       ``sampler.name``     :mod:`tripletlab.data.samplers`   ``sampler/``
``TRACKERS``       ``logger.name``      :mod:`tripletlab.tracking`        ``logger/``
``DISTRIBUTIONS``  ``distribute.name``  :mod:`tripletlab.distribute`      ``distribute/``
=================  ===================  ================================  ==================

The valid names are the options in ``conf/<group>/`` (the YAML files a user picks with
``model=<name>``) plus anything registered at run time. Config checks, error messages and
the dispatch in each module all ask the registry, so a name is written in two places only:
the YAML file that a user selects and the ``register`` call on its code. Reading the names
needs neither TensorFlow nor Hydra, so configs are checked at composition time without
importing the (slow) modules that hold the code; :meth:`Registry.get` imports that module
on first use. ``tests/test_registry.py`` checks that the options and the code agree.

Adding a backbone is one function plus one YAML file (datasets, losses and samplers alike)::

    from tripletlab.registry import BACKBONES

    @BACKBONES.register("tiny")
    def tiny(x, cfg, reg):  # images [B, H, W, C] -> features [B, F]; cfg is the model node
        return keras.layers.Flatten()(x)

and ``conf/model/tiny.yaml`` holding ``name: tiny`` (the keys every model has, typed by
:class:`tripletlab.config.ModelConfig`), in ``conf/`` or in a folder on Hydra's search path
(``hydra.searchpath=[file:///my/conf]``). Then ``model=tiny`` works on the command line, in
sweeps and in ``tripletlab.compose``, once the function's module is imported (the package's
own are). A backbone with keys of its own declares them in a dataclass registered with
:func:`tripletlab.config.register_schema`, which its YAML selects.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from tripletlab.errors import ConfigError

T = TypeVar("T")


class Registry:
    """Names -> implementations of one kind (like TensorFlow Similarity's lookup tables).

    ``label`` is the registry's name in this module, ``key`` the config key that names one
    (both for messages), ``home`` the module whose import registers the package's own
    implementations, ``group`` the config group whose options (``conf/<group>/*.yaml``) are
    valid names before ``home`` is imported.
    """

    def __init__(self, label: str, key: str, home: str, group: str):
        self.label = label
        self.key = key
        self.home = home
        self.group = group
        self._entries: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Registry {self.label} ({self.key}): {', '.join(self.names())}>"

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on a function or object (returned as is)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"register() takes the name as a non-empty str, got {name!r}")

        def add(obj: T) -> T:
            if self._entries.get(name, obj) is not obj:
                raise ValueError(f"{self.key}={name!r} is registered already")
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Forget ``name`` (registered at run time, e.g. in a test or a notebook)."""
        self._entries.pop(name, None)

    def registered(self) -> tuple[str, ...]:
        """The names that have code now, in the order they were registered."""
        return tuple(self._entries)

    def options(self) -> tuple[str, ...]:
        """The options of ``conf/<group>/`` (sorted); none if the config folder is missing."""
        from tripletlab.resources import config_dir

        try:
            folder = config_dir() / self.group
        except ConfigError:
            return ()
        return tuple(sorted(p.stem for p in folder.glob("*.yaml")))

    def names(self) -> tuple[str, ...]:
        """Every valid name: the config options, then names registered at run time."""
        options = self.options()
        return options + tuple(n for n in self._entries if n not in options)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.options()

    def check(self, name: Any) -> str:
        """``name`` if valid, else ConfigError naming the valid ones; imports nothing."""
        if not isinstance(name, str) or name not in self:
            raise ConfigError(
                f"{self.key}={name!r} is not valid; choose one of: {', '.join(self.names())}"
            )
        return name

    def get(self, name_or_object: Any) -> Any:
        """The implementation registered as ``name_or_object``; a non-str passes through."""
        if not isinstance(name_or_object, str):
            return name_or_object
        name = name_or_object
        if name not in self._entries:
            importlib.import_module(self.home)  # registers the package's own on import
        if name not in self._entries:
            self.check(name)  # unknown: name the valid ones
            raise ConfigError(
                f"{self.key}={name!r} has no implementation: conf/{self.group}/{name}.yaml "
                f"names it, but no code was registered with @{self.label}.register({name!r}) "
                "(import the module that defines it first)"
            )
        return self._entries[name]


DATASETS = Registry("DATASETS", "dataset.name", home="tripletlab.data", group="dataset")
BACKBONES = Registry("BACKBONES", "model.name", home="tripletlab.models", group="model")
LOSSES = Registry("LOSSES", "mining.strategy", home="tripletlab.losses", group="mining")
SAMPLERS = Registry("SAMPLERS", "sampler.name", home="tripletlab.data.samplers", group="sampler")
TRACKERS = Registry("TRACKERS", "logger.name", home="tripletlab.tracking", group="logger")
DISTRIBUTIONS = Registry(
    "DISTRIBUTIONS", "distribute.name", home="tripletlab.distribute", group="distribute"
)
