"""The record of a run: its config and its training data, written once, checked by reruns.

When a process claims a folder that holds no run yet (:func:`claim`, under the folder's
lock), it writes ``.hydra/config.yaml`` (the composed config as Hydra writes it: not
resolved, so an ``${oc.env:...}`` stays a reference) and ``.hydra/data.yaml`` (the training
data's fingerprint, :func:`tripletlab.data.fingerprint`). A rerun into a folder that holds a
run compares with those two files only, and never writes them again: the run summary's
config is a copy for readers, not a source. ``trainer.resume=force`` resumes whatever
differs and appends what it changed to ``.hydra/forced_resumes.yaml``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tripletlab.io_utils import atomic_write_text, read_yaml
from tripletlab.run_folder import FINISHED, RunConfigMismatch, RunFolder

log = logging.getLogger("tripletlab")

# A data change is named file by file (or folder by folder); past this many, it is counted.
MAX_DATA_LINES = 10


def config_record(cfg: Any) -> str:
    """``cfg`` as ``.hydra/config.yaml`` holds it: a DictConfig as Hydra writes it (not
    resolved, without the ``hydra`` node), a dataclass or mapping as plain YAML."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    from tripletlab.config import to_container

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    return yaml.safe_dump(to_container(cfg), sort_keys=False)


def _dump(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def read_config_record(folder: RunFolder) -> dict | None:
    """The folder's ``.hydra/config.yaml`` as plain data; None when there is none."""
    loaded = read_yaml(folder.config_path)
    return loaded if isinstance(loaded, dict) and loaded else None


def read_data_record(folder: RunFolder) -> dict | None:
    loaded = read_yaml(folder.data_record_path)
    return loaded if isinstance(loaded, dict) and loaded else None


def write_data_record(folder: RunFolder, fingerprint: Mapping) -> None:
    atomic_write_text(folder.data_record_path, _dump(dict(fingerprint)))


def record_data(folder: RunFolder, dataset_cfg: Any) -> None:
    """Record the data's fingerprint if the folder has none yet: its files were not there
    when the folder was claimed (downloaded since)."""
    from tripletlab.data import fingerprint

    if read_data_record(folder) is None and (found := fingerprint(dataset_cfg)) is not None:
        write_data_record(folder, found)


def holds_previous_run(folder: RunFolder) -> bool:
    """Whether ``folder`` holds a run's work: a checkpoint, or a finished run."""
    return (folder.checkpoints_dir / "checkpoint").is_file() or folder.status in FINISHED


def config_differences(saved: Mapping, new: Mapping, ignore: Sequence[str] = ()) -> list[str]:
    """``key: saved -> new`` for every leaf that differs, leaving out ``ignore`` (and below)."""

    def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, Mapping):
            out: dict[str, Any] = {}
            for key, value in node.items():
                out.update(leaves(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): node}

    def ignored(key: str) -> bool:
        return any(key == i or key.startswith(f"{i}.") for i in ignore)

    old, now = leaves(saved), leaves(new)
    missing = object()
    lines = []
    for key in sorted(set(old) | set(now)):
        a, b = old.get(key, missing), now.get(key, missing)
        if ignored(key) or a == b:
            continue
        shown = ["(absent)" if v is missing else repr(v) for v in (a, b)]
        lines.append(f"{key}: {shown[0]} -> {shown[1]}")
    return lines


def data_differences(saved: Mapping | None, new: Mapping | None) -> list[str]:
    """``data <key>: saved -> new`` for each part of the fingerprint that differs; none
    when either side is unknown (the files are not there yet: they are then downloaded,
    and checked against their published checksums)."""
    if saved is None or new is None:
        return []
    lines = [f"data {line}" for line in config_differences(saved, new)]
    if len(lines) > MAX_DATA_LINES:
        lines = [*lines[:MAX_DATA_LINES], f"and {len(lines) - MAX_DATA_LINES} more differences"]
    return lines


def check_resume(
    folder: RunFolder, config: Mapping | None, mode: str, data: Mapping | None = None
) -> list[str] | None:
    """Refuse a rerun that would mix two configs or two datasets in ``folder``.

    ``config``: the new config as the record holds it (:func:`config_record`, loaded);
    ``data``: the new data's fingerprint (None: unknown yet). ``mode`` is
    ``trainer.resume``: ``auto`` resumes only when both equal the record, apart from
    :data:`tripletlab.config.RESUME_NEUTRAL_KEYS`; ``never`` refuses any folder that holds
    a run; ``force`` resumes whatever differs (logged). Returns None when the folder holds
    no run (this one is its first), else the differences a forced resume accepted.
    """
    from tripletlab.config import RESUME_NEUTRAL_KEYS

    if not holds_previous_run(folder):
        return None
    new_folder = "start it in a new folder (hydra.run.dir=PATH, or no hydra.run.dir)"
    if mode == "never":
        raise RunConfigMismatch(
            f"run folder {folder.path} already holds a run and trainer.resume=never: "
            f"{new_folder}, or resume it with trainer.resume=auto"
        )
    saved = read_config_record(folder)
    if saved is None:
        differences = [f"(the saved run has no record of its config, {folder.config_path})"]
    elif config is None:
        differences = []
    else:
        differences = config_differences(saved, config, RESUME_NEUTRAL_KEYS)
    data_changes = data_differences(read_data_record(folder), data)
    if not differences and not data_changes:
        return []
    changes = [*differences, *data_changes]
    if mode == "force":
        log.warning(
            "trainer.resume=force: resuming %s with a changed %s: %s",
            folder.path,
            "config" if differences else "dataset",
            "; ".join(changes),
        )
        return changes
    what = " and ".join(
        w for w, d in (("another config", differences), ("other data", data_changes)) if d
    )
    restore = (
        "Restore the data it was trained on" if not differences else "Rerun with the saved values"
    )
    raise RunConfigMismatch(
        f"run folder {folder.path} holds a run with {what}, so resuming it would mix "
        f"two experiments: {'; '.join(changes)}. {restore}, "
        f"{new_folder}, or train on from its checkpoint with this config: trainer.resume=force"
    )


def record_forced_resume(folder: RunFolder, changes: Sequence[str]) -> None:
    """Append what a forced resume changed, and after which epoch, to
    ``.hydra/forced_resumes.yaml`` (not again for the same changes as the last entry): the
    record itself keeps the run's first config."""
    entries = read_yaml(folder.forced_resumes_path)
    entries = entries if isinstance(entries, list) else []
    if entries and isinstance(entries[-1], dict) and entries[-1].get("changes") == list(changes):
        return  # the same forced command again (rerun after a kill): already recorded
    entries.append(
        {
            "after_epoch": committed_epoch(folder),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "changes": list(changes),
        }
    )
    atomic_write_text(folder.forced_resumes_path, _dump(entries))


def committed_epoch(folder: RunFolder) -> int:
    """The epoch of the folder's latest checkpoint, from the checkpoint index (0 if none)."""
    import re

    try:
        text = (folder.checkpoints_dir / "checkpoint").read_text()
    except OSError:
        return 0
    match = re.search(r'model_checkpoint_path:\s*"[^"]*?ckpt-(\d+)"', text)
    return int(match.group(1)) if match else 0


def claim(folder: RunFolder, cfg: Any, mode: str, on_claimed=None) -> None:
    """Make ``folder`` this run's, under its lock: a folder without a run gets the record
    (config, data fingerprint) and ``on_claimed()`` (Hydra's own files); a folder whose run
    has the same config and data is resumed as it is; anything else is refused
    (:func:`check_resume`)."""
    from tripletlab.data import fingerprint

    text = config_record(cfg)
    import yaml

    dataset = getattr(cfg, "dataset", None)
    data = fingerprint(dataset) if dataset is not None else None
    forced = check_resume(folder, yaml.safe_load(text), mode, data)
    if forced is None:  # a folder of its own: the record is written now, and only now
        atomic_write_text(folder.config_path, text)
        if data is not None:
            write_data_record(folder, data)
        elif folder.data_record_path.exists():  # unknown until loaded: recorded then
            folder.data_record_path.unlink()
        if folder.forced_resumes_path.exists():
            folder.forced_resumes_path.unlink()
        if on_claimed is not None:
            on_claimed()
        return
    if forced:
        record_forced_resume(folder, forced)
    if data is not None and read_data_record(folder) is None:  # a folder from before
        write_data_record(folder, data)
