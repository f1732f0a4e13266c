"""``_target_`` for one-off code: ``model=custom``, ``dataset=custom`` and ``logger=custom``
instantiate the user's callable with :func:`hydra.utils.instantiate` (as
lightning-hydra-template does) and call it with the arguments a registered option's code
gets. The contracts (docs/extending.md):

* backbone, ``model._target_``: ``(x, cfg, reg) -> features``: images x [B, H, W, C]
  (a Keras tensor), the model node, a kernel regulariser or None -> features [B, F]
  (a Keras tensor); the embedding head goes on top;
* dataset loader, ``dataset._target_``: ``(cfg) -> (x_train, y_train, x_test, y_test,
  class_names)``: uint8 images [N, H, W, C], integer labels [N] indexing class_names (or a
  :class:`tripletlab.data.Dataset`); split, max_train, image_size... apply after;
* tracker, ``logger._target_``: ``(logger_cfg, folder, config) -> tracker`` with any of
  ``on_train_begin()``, ``on_epoch_end(row)``, ``on_train_end(summary)``.

A target that cannot be imported, cannot be called (not callable, or refused by Hydra's
instantiate) or does not take these arguments is one ConfigError; a
tracker's is checked at the run's start (:func:`tripletlab.tracking.make_trackers`), where
what the tracker itself raises is a warning.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from tripletlab.errors import ConfigError


class TargetError(ConfigError):
    """A target the call itself refused (Hydra's blocklist, a builtin's arguments): the
    user's mistake, not what their code raised, so a tracker's stops the run too."""


def check_target(key: str, target: Any, *args: Any) -> Any:
    """The callable ``target`` names if it can be imported and called with ``args``
    (placeholders will do: only their number is checked); else ConfigError naming ``key``."""
    try:
        function = _resolve(str(target))
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"{key}={target!r} cannot be imported ({type(err).__name__}: {err}); give a "
            "module's callable as package.module.name"
        ) from None
    if not callable(function):
        raise ConfigError(
            f"{key}={target!r} names a value of type {type(function).__name__}, which "
            "cannot be called; give a module's callable as package.module.name"
        )
    try:
        inspect.signature(function).bind(*args)
    except TypeError as err:
        raise ConfigError(
            f"{key}={target!r} must take {len(args)} positional arguments (see "
            f"docs/extending.md): {err}"
        ) from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    return function


def call_target(key: str, target: Any, *args: Any) -> Any:
    """``target(*args)`` through :func:`hydra.utils.instantiate`; ConfigError naming
    ``key`` when the target is missing or its signature does not take ``args``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    check_target(key, target, *args)

    try:
        return instantiate({"_target_": str(target)}, *args)
    except InstantiationException as err:
        from tripletlab.registry import describe

        cause = err.__cause__
        if cause is None:  # Hydra refused the target itself (its blocklist: os.chown, ...)
            raise TargetError(f"{key}={target!r} cannot be called: {describe(err)}") from None
        if isinstance(cause, TypeError) and _raised_by_the_call(cause):
            # a builtin without a signature to check (collections.OrderedDict): the call
            # itself failed, not the code behind it
            raise TargetError(
                f"{key}={target!r} must take {len(args)} positional arguments (see "
                f"docs/extending.md): {cause}"
            ) from None
        # the user's code raised: its own error and traceback, not Hydra's two-line wrapper
        raise cause from None


def _raised_by_the_call(err: BaseException) -> bool:
    """Whether ``err`` has no frame below Hydra's call of the target (a builtin's)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "hydra" in Path(tb.tb_frame.f_code.co_filename).parts


def _resolve(dotted: str) -> Any:
    """The object at ``package.module.name`` (the longest importable module, then
    attributes), as Hydra's instantiate finds it, without its error log line."""
    import importlib

    parts = dotted.split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"{dotted!r} is not a dotted path")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if cut > 1 and err.name and ".".join(parts[:cut]).startswith(err.name):
                continue  # a shorter prefix may be the module
            raise
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module in {dotted!r}")


def custom_backbone(x: Any, cfg: Any, reg: Any) -> Any:
    """``model=custom``: the features of the user's backbone, ``model._target_``."""
    features = call_target("model._target_", cfg._target_, x, cfg, reg)
    import keras

    shape = getattr(features, "shape", None)
    if not isinstance(features, keras.KerasTensor) or len(shape) != 2 or not shape[1]:
        raise ConfigError(
            f"model._target_={cfg._target_!r} returned {type(features).__name__} of shape "
            f"{shape}; it must return features [B, F] (a Keras tensor, F known)"
        )
    try:  # the features must be computed from x: the model is built from x to them
        keras.Model(x, features)
    except ValueError as err:
        raise ConfigError(
            f"model._target_={cfg._target_!r} returned features not computed from its "
            f"input x ({' '.join(str(err).split())}); build them from x"
        ) from None
    return features


def _custom_load(cfg: Any) -> Any:
    """``dataset=custom``: the user's loader, ``dataset._target_``, checked (a
    :class:`~tripletlab.data.Dataset` it returns too: its arrays, not its streamed files)."""

    from tripletlab.data.base import Dataset

    loaded = call_target("dataset._target_", cfg._target_, cfg)
    where = f"dataset._target_={cfg._target_!r}"
    if isinstance(loaded, Dataset):
        splits = [("train", loaded.x_train, loaded.y_train), ("test", loaded.x_test, loaded.y_test)]
        if loaded.x_gallery is not None or loaded.y_gallery is not None:
            splits.append(("gallery", loaded.x_gallery, loaded.y_gallery))
        _check_splits(where, splits, loaded.class_names, cfg)
        return loaded
    if not (isinstance(loaded, tuple | list) and len(loaded) == 5):
        raise ConfigError(
            f"{where} returned {type(loaded).__name__}; it must return (x_train, y_train, "
            "x_test, y_test, class_names)"
        )
    x_train, y_train, x_test, y_test, class_names = loaded
    arrays = _check_splits(
        where, [("train", x_train, y_train), ("test", x_test, y_test)], class_names, cfg
    )
    return (*arrays, [str(n) for n in class_names], str(cfg._target_))


def _check_splits(where: str, splits: list, class_names: Any, cfg: Any) -> list:
    """[x, y, ...] of ``splits`` ((what, images, labels), train first, test second) as
    arrays, if each is uint8 images [N, H, W, C] (or streamed ImageFiles) and integer labels
    [N] indexing ``class_names``, train and test of one size unless dataset.image_size."""
    import numpy as np

    from tripletlab.data.image_files import ImageFiles

    if isinstance(class_names, str) or not isinstance(class_names, list | tuple | np.ndarray):
        raise ConfigError(f"{where}: class_names must be a list, got {type(class_names).__name__}")
    arrays = []
    for what, x, y in splits:
        try:
            x = x if isinstance(x, ImageFiles) else np.asarray(x)
            y = np.asarray(y)
        except ValueError as err:  # ragged
            raise ConfigError(f"{where}: the {what} split is not an array ({err})") from None
        if len(x.shape) != 4 or x.dtype != np.uint8 or y.shape != (len(x),) or 0 in x.shape:
            raise ConfigError(
                f"{where}: the {what} split must be uint8 images [N, H, W, C] and labels [N], "
                f"none empty, got {x.dtype} {x.shape} and {y.shape}"
            )
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= len(class_names):
            got = f" from {y.min()} to {y.max()}" if y.dtype.kind in "iubf" else ""
            raise ConfigError(
                f"{where}: the {what} labels must be integers in [0, {len(class_names)}) "
                f"indexing class_names, got {y.dtype}{got}"
            )
        arrays += [x, y]
    if arrays[0].shape[1:] != arrays[2].shape[1:] and getattr(cfg, "image_size", None) is None:
        raise ConfigError(
            f"{where}: train images {arrays[0].shape[1:]} and test images "
            f"{arrays[2].shape[1:]} differ; return one size or set dataset.image_size"
        )
    return arrays


def _custom_ensure(root: Any, download: bool, url: Any, allow_insecure_url: bool) -> tuple:
    raise ConfigError("dataset=custom has nothing to fetch: its dataset._target_ loads it")


def custom_tracker(logger_cfg: Any, folder: Any, config: Any) -> Any:
    """``logger=custom``: the user's tracker, ``logger._target_``."""
    return call_target("logger._target_", logger_cfg._target_, logger_cfg, folder, config)


def __getattr__(name: str) -> Any:
    if name == "CUSTOM_DATASET":  # built on first use: DatasetSource imports the data code
        from tripletlab.data.base import DatasetSource

        return DatasetSource(_custom_load, _custom_ensure)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Path", "call_target", "check_target", "custom_backbone", "custom_tracker"]
