"""Reuse a finished run folder: its config, its saved model and its embedding path.

A run folder (see DESIGN.md, "One run's folder") holds everything needed to use the trained
model again: ``.hydra/config.yaml`` (the composed config), ``.hydra/overrides.yaml`` (the
command-line overrides it was composed from) and ``model/embedding_model.keras``. The tools
``tripletlab.evaluate``, ``tripletlab.visualize`` and ``tripletlab.embed`` build on this
module so that a user never retypes a run's config.

New overrides are applied to the run's saved config:

- ``key=value`` (``trainer.threads=2``, ``dataset.root=/data``) changes one value of the saved
  config, typed and checked by the schema;
- ``group=option`` (``dataset=image_folder``, ``model=lenet``) swaps a whole config group: the
  group is composed with Hydra's compose API from ``conf/`` (with the run's overrides for
  other groups plus the new ones), then put in place of the run's.

Nothing here imports TensorFlow until a model is loaded, so a bad run folder or a bad
override fails in a fraction of a second.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.errors import ConfigError, TripletLabError

log = logging.getLogger("tripletlab")

CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
MODEL_DIR = "model"
# The project's config groups (for group overrides such as dataset=image_folder).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SPLITS = ("test", "train")


class RunFolderError(TripletLabError):
    """A folder is not a run folder, or the run lacks what is needed (its saved model)."""


# --------------------------------------------------------------------------- the folder


def check_run_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a run folder (it has .hydra/config.yaml), else an error."""
    run_dir = Path(path).expanduser()
    if not run_dir.exists():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is not a folder: give the run folder that run.py wrote")
    if (run_dir / CONFIG_FILE).is_file():
        return run_dir
    runs = sorted(p.parent.parent for p in run_dir.glob(f"*/{CONFIG_FILE}"))
    runs += sorted(p.parent.parent for p in run_dir.glob(f"*/*/{CONFIG_FILE}"))
    hint = (
        f"; it holds {len(runs)} run folder(s), e.g. {runs[0]}: give one of them"
        if runs
        else "; a run folder is what `python run.py` writes (outputs/runs/<date>/<time>/)"
    )
    raise RunFolderError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}{hint}")


def model_path(run_dir: str | os.PathLike) -> Path:
    """The run's saved Keras model; an error naming the run's status if there is none."""
    from tripletlab.train import MODEL_FILE

    run_dir = Path(run_dir)
    path = run_dir / MODEL_DIR / MODEL_FILE
    if path.is_file():
        return path
    status = read_summary(run_dir).get("status")
    what = f"run {run_dir} has no saved model ({MODEL_DIR}/{MODEL_FILE})"
    rerun = f"run.py with the run's overrides and hydra.run.dir={run_dir}"
    if status in ("ok", "collapsed"):
        raise RunFolderError(
            f"{what}, although it finished ({status}): the file was removed; {rerun} writes it "
            "again from the last checkpoint"
        )
    why = f" (its status is {status!r})" if status else ""
    raise RunFolderError(
        f"{what}{why}: the model is saved when training finishes; finish the run first "
        f"({rerun} resumes it from its last checkpoint)"
    )


def read_summary(run_dir: str | os.PathLike) -> dict:
    """summary.json as a dict; {} if it is missing or unreadable."""
    import json

    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def read_metrics_rows(run_dir: str | os.PathLike) -> list[dict]:
    from tripletlab.train import read_metrics_csv

    return read_metrics_csv(Path(run_dir) / "metrics.csv")


# --------------------------------------------------------------------------- the config


def _load_yaml(path: Path, what: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError, OSError, omegaconf errors
        raise RunFolderError(f"cannot read {what} {path}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line, without OmegaConf's full_key/... details."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    lines = [
        line
        for line in lines
        if line and not line.startswith(("full_key:", "reference_type=", "object_type="))
    ]
    text = ""
    for line in lines:
        text += ("" if not text else " " if text.endswith(":") else "; ") + line
    return text or type(exc).__name__


def _parse_overrides(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(
            f"cannot parse the overrides {' '.join(overrides)}: {_one_line(exc)} "
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


def _override_key(line: str) -> str:
    """The key (or group) of an override line: ``+dataset.root=/x`` -> ``dataset.root``."""
    return re.split(r"[=@]", line.lstrip("+~"), maxsplit=1)[0].strip()


def _hydra_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (HydraException, OmegaConfBaseException, ValueError)


def _compose(overrides: list[str]):
    """Compose conf/ with ``overrides``; also returns the names of the config groups."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tripletlab.config import register_configs

    if not CONF_DIR.is_dir():
        raise ConfigError(
            f"group overrides need the project's config folder {CONF_DIR}, which is missing: "
            "install tripletlab from its source tree (pip install -e .)"
        )
    register_configs()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = {g for g in loader.list_groups("") if g != "hydra"}
        try:
            cfg = compose(config_name="config", overrides=overrides) if overrides else None
        except _hydra_error_types() as exc:
            # Hydra appends its search path to the message: noise for a user.
            text = _one_line(exc).split("; Config search path")[0]
            raise ConfigError(f"cannot compose the config: {text}") from None
    GlobalHydra.instance().clear()
    return cfg, groups


def _touches(override_key: str, group: str) -> bool:
    return override_key == group or override_key.startswith(group + ".")


def _resolve_saved_root(cfg, run_dir: Path) -> None:
    """A relative dataset.root was relative to the folder training started in: keep it so."""
    root = cfg.dataset.get("root")
    if not root or Path(str(root)).expanduser().is_absolute() or Path(str(root)).exists():
        return
    hydra_yaml = run_dir / HYDRA_FILE
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

    from tripletlab.config import Config, validate

    run_dir = check_run_dir(run_dir)
    saved = _load_yaml(run_dir / CONFIG_FILE, "the run's config")
    run_overrides: list[str] = []
    if (run_dir / OVERRIDES_FILE).is_file():
        run_overrides = [str(o) for o in _load_yaml(run_dir / OVERRIDES_FILE, "the overrides")]
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)
    except _hydra_error_types() as exc:
        raise RunFolderError(
            f"the config of run {run_dir} ({CONFIG_FILE}) does not fit this version of "
            f"tripletlab: {_one_line(exc)}"
        ) from None
    _resolve_saved_root(cfg, run_dir)

    overrides = [str(o) for o in overrides]
    parsed = _parse_overrides(overrides)
    result = RunConfig(cfg, overrides, run_overrides)
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
                if not any(_touches(_override_key(line), g) for g in swapped)
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
            raise ConfigError(
                f"cannot apply the override {o.input_line}: {_one_line(exc)}"
            ) from None
    validate(cfg)
    return result


# --------------------------------------------------------------------------- the model


def setup_tf(cfg) -> bool:
    """TensorFlow set up as training did (threads, GPU memory growth, precision policy).

    Returns whether embedding uses XLA (``trainer.jit_compile``: auto is on for a GPU).
    """
    from tripletlab.train import setup_tf as setup_training_tf

    return setup_training_tf(cfg.trainer)[0]


def load_model(run_dir: str | os.PathLike):
    """The run's saved embedding model (Keras)."""
    import keras

    import tripletlab.models  # noqa: F401  registers FusedBatchNorm for deserialisation

    path = model_path(run_dir)
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, ...
        raise RunFolderError(
            f"cannot load the saved model {path}: {_one_line(exc)}; the file is corrupt or was "
            "written by another version of Keras"
        ) from None


class Embedder:
    """The run's model and its embedding path, exactly as training evaluated it.

    ``embed(images)`` takes uint8 [N, H, W, C] in the model's input shape, scales it to [0, 1]
    and embeds it in batches of ``cfg.eval.batch_size`` with the same compiled step as
    training (``tripletlab.train.make_steps``' embed step), so the same images give the
    same embeddings, bit for bit, as training's last evaluation.
    """

    def __init__(self, model, cfg, jit_compile: bool = False):
        from tripletlab.train import make_steps

        self.model = model
        self.cfg = cfg
        # Training's own embed step (the train step next to it is never traced or run).
        _, self._step = make_steps(model, None, cfg.mining, jit_compile=jit_compile)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        shape = self.model.input_shape
        return tuple(int(s) for s in shape[1:])  # type: ignore[return-value]

    @property
    def embedding_size(self) -> int:
        return int(self.model.output_shape[-1])

    def embed(self, images: np.ndarray) -> np.ndarray:
        from tripletlab.train import embed_images

        images = np.asarray(images)
        if images.shape[1:] != self.input_shape:
            images = conform_images(images, self.input_shape)
        return embed_images(self._step, images, self.cfg.eval.batch_size, self.embedding_size)


def open_model(run_dir: str | os.PathLike, cfg) -> Embedder:
    """Set TensorFlow up as training did, load the run's model, return its Embedder."""
    jit = setup_tf(cfg)
    return Embedder(load_model(run_dir), cfg, jit_compile=jit)


# --------------------------------------------------------------------------- images and data


def conform_images(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 [N, h, w, c] -> [N, H, W, C] = shape: resized (bilinear) and grey <-> RGB.

    The same conversions as ``tripletlab.data`` (PIL's luma formula, bilinear resizing).
    """
    from PIL import Image

    from tripletlab.data import adapt_images

    h, w, c = (int(s) for s in shape)
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 4:
        x = x[..., :3]
    if h == w:
        x = adapt_images(x, h, c)
    else:
        x = adapt_images(x, None, c)
        if x.shape[1:3] != (h, w):
            out = np.empty((len(x), h, w, x.shape[-1]), np.uint8)
            for i, img in enumerate(x):
                im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
                resized = im.resize((w, h), Image.Resampling.BILINEAR)
                out[i] = np.asarray(resized).reshape(out.shape[1:])
            x = out
    return np.ascontiguousarray(x)


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

    On the run's own data these are the very arrays training used.
    """
    from tripletlab.data import load_dataset

    fit_dataset_to_model(run_cfg, input_shape)
    data = load_dataset(run_cfg.cfg.dataset)
    shape = tuple(int(s) for s in input_shape)
    if data.image_shape != shape:
        log.info("converting %s images from %s to %s", data.name, data.image_shape, shape)
        data.x_train = conform_images(data.x_train, shape)
        data.x_test = conform_images(data.x_test, shape)
    return data


def split_arrays(data, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not valid; choose one of: {', '.join(SPLITS)}")
    return (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)


# --------------------------------------------------------------------------- command lines


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a tool's ``main``: a TripletLabError becomes one ``error: ...`` line and exit 1."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Our messages at INFO; other libraries' (absl, TensorFlow) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    try:
        return main(argv)
    except TripletLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain text table; floats with 4 decimals, columns aligned."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4f}"
        return "-" if v is None else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)
