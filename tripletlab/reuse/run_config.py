"""Reuse a finished run: its config with new overrides, and its data in the model's shape.

A run folder (:mod:`tripletlab.run_folder`) holds ``.hydra/config.yaml`` (the composed
config), ``.hydra/overrides.yaml`` (the overrides it was composed from) and the saved model.
``tripletlab-evaluate``, ``-visualize`` and ``-embed`` build on this module so that a user
never retypes a run's config. New overrides are applied to the run's saved config:

- ``key=value`` (``trainer.threads=2``, ``dataset.root=/data``) changes one value of the saved
  config, typed and checked by the schema;
- ``group=option`` (``dataset=image_folder``, ``model=lenet``) swaps a whole config group: the
  group is composed with Hydra's compose API from the config folder (with the run's overrides
  for other groups plus the new ones), then put in place of the run's.

Nothing here imports TensorFlow, so a bad run folder or a bad override fails in a fraction
of a second.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.errors import ConfigError, one_line
from tripletlab.inference import SPLITS
from tripletlab.overrides import override_key
from tripletlab.run_folder import RunFolder, RunFolderError

log = logging.getLogger("tripletlab")


def _load_yaml(path: Path, what: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError, OSError, omegaconf errors
        raise RunFolderError(f"cannot read {what} {path}: {one_line(exc)}") from None


def _parse_overrides(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(
            f"cannot parse the overrides {' '.join(overrides)}: {one_line(exc)} "
            "(write them as key=value, e.g. dataset.root=/data or dataset=image_folder)"
        ) from None
    for o in parsed:
        key = o.key_or_group
        if o.is_sweep_override():
            raise ConfigError(f"{o.input_line}: a sweep has no meaning here; give one value")
        if o.is_delete():
            raise ConfigError(f"{o.input_line}: deleting a key is not supported here")
        if key == "hydra" or key.startswith("hydra.") or o.package is not None:
            raise ConfigError(f"{o.input_line}: Hydra's own settings have no effect here")
    return parsed


def _hydra_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (HydraException, OmegaConfBaseException, ValueError)


def _compose(overrides: list[str]):
    """Compose the config folder with ``overrides``; also returns the config group names."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tripletlab.config import register_configs
    from tripletlab.resources import config_dir

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            groups = {g for g in loader.list_groups("") if g != "hydra"}
            try:
                cfg = compose(config_name="config", overrides=overrides) if overrides else None
            except _hydra_error_types() as exc:
                # Hydra appends its search path to the message: noise for a user.
                text = one_line(exc).split("; Config search path")[0]
                raise ConfigError(f"cannot compose the config: {text}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg, groups


def _group_key(line: str) -> str:
    """The key or group an override line changes: ``+dataset.root=/x`` -> ``dataset.root``,
    ``~model`` and ``model@x=lenet`` -> ``model``."""
    return override_key(line).lstrip("~").split("@", 1)[0]


def _touches(key: str, group: str) -> bool:
    return key == group or key.startswith(group + ".")


def _resolve_saved_root(cfg, folder: RunFolder) -> None:
    """A relative dataset.root was relative to the folder training started in: keep it so."""
    root = cfg.dataset.get("root")
    if not root or Path(str(root)).expanduser().is_absolute() or Path(str(root)).exists():
        return
    hydra_yaml = folder.hydra_path
    if not hydra_yaml.is_file():
        return
    try:
        cwd = _load_yaml(hydra_yaml, "Hydra's settings").hydra.runtime.cwd
    except Exception:
        return
    candidate = Path(str(cwd)) / str(root)
    if candidate.exists():
        cfg.dataset.root = str(candidate)


@dataclass
class RunConfig:
    """A run's config with new overrides applied, and what those overrides changed."""

    cfg: Any  # DictConfig typed by tripletlab.config.Config
    folder: RunFolder
    overrides: list[str] = field(default_factory=list)  # the new ones, as given
    run_overrides: list[str] = field(default_factory=list)  # those the run was trained with
    changed_groups: set[str] = field(default_factory=set)  # groups swapped by the new ones
    changed_keys: set[str] = field(default_factory=set)  # keys set by the new ones

    @property
    def dataset_changed(self) -> bool:
        return any(_touches(k, "dataset") for k in self.changed_keys | self.changed_groups)


def load_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> RunConfig:
    """The run's ``.hydra/config.yaml`` with ``overrides`` applied (see the module docstring)."""
    from omegaconf import OmegaConf

    from tripletlab.compose_errors import explain_compose_error
    from tripletlab.config import typed, validate

    folder = RunFolder.existing(run_dir)
    saved = _load_yaml(folder.config_path, "the run's config")
    run_overrides: list[str] = []
    if folder.overrides_path.is_file():
        run_overrides = [str(o) for o in _load_yaml(folder.overrides_path, "the overrides")]
    try:
        cfg = typed(saved)  # each group typed by its option's schema
    except _hydra_error_types() as exc:
        raise RunFolderError(
            f"the config of run {folder.path} ({folder.config_path.name}) does not fit this "
            f"version of tripletlab: {one_line(exc)}"
        ) from None
    _resolve_saved_root(cfg, folder)

    overrides = [str(o) for o in overrides]
    parsed = _parse_overrides(overrides)
    result = RunConfig(cfg, folder, overrides, run_overrides)
    if not parsed:
        validate(cfg)
        return result

    fresh = None
    if any("." not in o.key_or_group for o in parsed):
        # A top-level name may be a config group (dataset=image_folder): ask Hydra.
        _, groups = _compose([])
        swapped = {o.key_or_group for o in parsed if o.key_or_group in groups}
        if swapped:
            if "experiment" in swapped:
                raise ConfigError(
                    "experiment=... presets change training settings; they have no meaning "
                    "for a trained run"
                )
            # The run's overrides for a swapped group (dataset.root of the old dataset...)
            # do not carry over to the new option.
            kept = [
                line
                for line in run_overrides
                if not any(_touches(_group_key(line), g) for g in swapped)
            ]
            fresh, _ = _compose([*kept, *overrides])
            for group in sorted(swapped):
                cfg[group] = fresh[group]
            result.changed_groups = swapped
    for o in parsed:
        key = o.key_or_group
        if key in result.changed_groups:
            continue
        result.changed_keys.add(key)
        try:
            value = OmegaConf.select(fresh, key) if fresh is not None else o.value()
            OmegaConf.update(cfg, key, value, merge=False)
        except _hydra_error_types() as exc:
            text = explain_compose_error(exc) or one_line(exc)
            raise ConfigError(f"cannot apply the override {o.input_line}: {text}") from None
    validate(cfg)
    return result


# --------------------------------------------------------------------------- images and data


def fit_dataset_to_model(run_cfg: RunConfig, input_shape: Sequence[int]) -> None:
    """Size another dataset for the model: when the overrides changed the data
    (``dataset=image_folder``), ``dataset.image_size`` and ``dataset.channels`` become the
    model's unless the overrides set them. Changes ``run_cfg.cfg`` in place.
    """
    if not run_cfg.dataset_changed:
        return
    ds = run_cfg.cfg.dataset
    h, w, c = (int(s) for s in input_shape)
    if "dataset.image_size" not in run_cfg.changed_keys and h == w:
        ds.image_size = h
    if "dataset.channels" not in run_cfg.changed_keys:
        ds.channels = c


def load_data(run_cfg: RunConfig, input_shape: Sequence[int]):
    """The dataset of ``run_cfg`` with both splits in the model's input shape.

    On the run's own data these are the very arrays training used, unless its files
    changed since: then a warning names what changed (:func:`warn_if_data_changed`).
    """
    from tripletlab.data import conform_images, load_dataset

    fit_dataset_to_model(run_cfg, input_shape)
    data = load_dataset(run_cfg.cfg.dataset)
    if not run_cfg.dataset_changed:
        warn_if_data_changed(run_cfg)
    shape = tuple(int(s) for s in input_shape)
    if data.image_shape != shape:
        log.info("converting %s images from %s to %s", data.name, data.image_shape, shape)
        data.x_train = conform_images(data.x_train, shape)
        data.x_test = conform_images(data.x_test, shape)
    return data


def warn_if_data_changed(run_cfg: RunConfig) -> None:
    """A warning naming what differs when the run's own data (no dataset override) no
    longer matches the fingerprint recorded at training (``.hydra/data.yaml``)."""
    from tripletlab.data import fingerprint
    from tripletlab.run_record import data_differences, read_data_record

    changes = data_differences(read_data_record(run_cfg.folder), fingerprint(run_cfg.cfg.dataset))
    if changes:
        log.warning(
            "the data of run %s changed since it was trained: %s",
            run_cfg.folder.path,
            "; ".join(changes),
        )


def split_arrays(data, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not valid; choose one of: {', '.join(SPLITS)}")
    return (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
