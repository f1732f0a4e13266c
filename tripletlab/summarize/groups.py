"""Configurations: runs equal but for their seed, with the statistics of each metric
(:func:`group_rows`) and each configuration against a reference (:func:`compare_groups`).

The numbers come from :mod:`tripletlab.summarize.stats` (Student-t intervals, paired or
Welch t-tests, Holm's adjustment); this module only decides what is compared with what.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from tripletlab.config import METRICS
from tripletlab.errors import TripletLabError
from tripletlab.overrides import override_key
from tripletlab.registry import REGISTRIES
from tripletlab.run_folder import FINISHED, Status
from tripletlab.summarize import stats
from tripletlab.summarize.rows import _missing

# Keys that never make two runs different configurations: the seed (that is what we average
# over) and settings that change speed or display, not results.
NOT_CONFIGURATION = ("seed", "trainer.threads", "trainer.progress")

# Metrics shown in the markdown table besides the optimised one (all are in summary.csv).
TABLE_METRICS = ("precision_at_1", "recall_at_4", "map_at_r", "knn_accuracy")

# Averaged over the finished runs of a configuration, besides the metrics.
TIMING = ("train_seconds", "images_per_second")


def _configuration_key(row: Mapping[str, Any]) -> str:
    """What makes a configuration: the flattened config but for :data:`NOT_CONFIGURATION`
    (without a config: the overrides and the folder)."""
    if row["_has_config"]:
        skip = {f"config.{k}" for k in NOT_CONFIGURATION}
        flat = {
            k: v
            for k, v in row.items()
            if k.startswith("config.") and k not in skip and not _missing(v)
        }
        return json.dumps(flat, sort_keys=True, default=str)
    kept = [o for o in row["_overrides"] if override_key(o).lstrip("~") not in NOT_CONFIGURATION]
    return json.dumps({"overrides": sorted(kept), "folder": str(row["_path"].parent)})


def _status_text(statuses: pd.Series) -> str:
    counts = statuses.value_counts(sort=False)
    if list(counts.index) == [Status.OK.value]:
        return "ok"
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _labels(firsts: Sequence[list[str]]) -> list[str]:
    """Each group's overrides that not every group shares (model and mining, the seed and
    settings that do not change results left out: they have columns or do not count)."""
    skip = ("model", "mining", *NOT_CONFIGURATION)
    per_group = [
        [o for o in overrides if override_key(o).lstrip("~") not in skip] for overrides in firsts
    ]
    common = set.intersection(*(set(o) for o in per_group)) if per_group else set()
    return [" ".join(o for o in overrides if o not in common) for overrides in per_group]


def _set_apart(groups: pd.DataFrame, sources: Sequence[Any]) -> list[str]:
    """The labels, with what sets apart configurations that would read the same (model,
    mining and label): the config keys whose values differ, else the folder or summary.csv
    each comes from (two CSVs of sweeps with the same overrides are two configurations)."""
    labels = list(groups["label"])
    same: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(groups["model"], groups["mining"], labels, strict=True)):
        same.setdefault(tuple(str(k) for k in key), []).append(i)
    skip = set(NOT_CONFIGURATION)
    for members in (m for m in same.values() if len(m) > 1):
        flats = [groups["_flat"].iloc[i] for i in members]
        # Keys every one has (a summary.csv has few: a key it lacks sets nothing apart).
        keys = set.intersection(*({k for k, v in f.items() if not _missing(v)} for f in flats))
        keys = sorted(keys - skip, key=str)
        differ = [k for k in keys if len({json.dumps(f[k], default=str) for f in flats}) > 1]
        shown = [str(sources[i]) for i in members]
        root = os.path.commonpath(shown) if len(set(shown)) > 1 else ""
        for i, flat in zip(members, flats, strict=True):
            extra = " ".join(f"{k}={flat[k]}" for k in differ[:3])
            if not differ and root:
                extra = f"from {os.path.relpath(str(sources[i]), root)}"
            labels[i] = " ".join(p for p in (labels[i], extra) if p)
    return labels


def _number(value: Any) -> float:
    try:
        return math.nan if _missing(value) else float(value)
    except (TypeError, ValueError):
        return math.nan


def _per_seed(
    part: pd.DataFrame, keys: Sequence[str]
) -> tuple[list, dict[str, list[float]], dict[Any, int]]:
    """A configuration's finished runs as one observation per seed: (seeds, {key: values,
    one per seed}, {seed: runs} for the seeds that ran more than once).

    Two runs with the same seed (a copied run folder, a rerun into another folder) are not
    two samples of the seed's variation: counted twice they would narrow the interval, and
    identical copies would make any gap look certain. A seed's value is the mean of its
    runs' values (missing ones left out); runs without a seed stay one each."""
    by_seed: dict[Any, list[int]] = {}
    for i, seed in enumerate(part["seed"] if "seed" in part else [None] * len(part)):
        by_seed.setdefault(object() if _missing(seed) else seed, []).append(i)
    values: dict[str, list[float]] = {}
    for k in keys:
        column = [_number(v) for v in part[k]] if k in part else [math.nan] * len(part)
        values[k] = []
        for members in by_seed.values():
            finite = [column[i] for i in members if math.isfinite(column[i])]
            values[k].append(sum(finite) / len(finite) if finite else math.nan)
    seeds = [None if type(s) is object else s for s in by_seed]
    repeats = {s: len(m) for s, m in by_seed.items() if len(m) > 1}
    return seeds, values, repeats


def group_rows(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per configuration (runs equal but for the seed), best mean ``metric`` first.

    Columns: model, mining, label (the overrides that set it apart; see :func:`_set_apart`),
    runs, n (the seeds of its finished runs: a seed that ran twice counts once, see
    :func:`_per_seed`), status ("ok" or "3 ok, 1 failed"); for the metrics and
    :data:`TIMING` ``<key>.n`` (seeds with a value), ``<key>.mean``, ``<key>.std`` (sample
    std) and ``<key>.low`` / ``<key>.high`` (the Student-t 95% interval of the mean), NaN where
    undefined (std and interval for one run); and the private ``_seeds`` (the finished
    runs' seeds, each once), ``_values`` ({key: values, one per seed, NaN where missing}),
    ``_repeats`` ({seed: runs} for a seed that ran more than once) and ``_flat``
    (the first run's flattened config, ``mining.strategy``...).
    """
    frame = rows.assign(_key=[_configuration_key(r) for r in rows.to_dict("records")])
    keys = list(dict.fromkeys([metric, *METRICS, *TIMING]))
    groups = frame.groupby("_key", sort=False).agg(
        model=("model", "first"),
        mining=("mining", "first"),
        runs=("status", "size"),
        status=("status", _status_text),
        _overrides=("_overrides", "first"),
    )
    finished = frame[frame["status"].isin(FINISHED)]
    members = {key: part for key, part in finished.groupby("_key", sort=False)}
    firsts = {key: part.iloc[0] for key, part in frame.groupby("_key", sort=False)}
    columns: dict[str, list] = {"n": [], "_seeds": [], "_values": [], "_repeats": [], "_flat": []}
    for key in groups.index:
        part = members.get(key, finished.iloc[:0])
        seeds, values, repeats = _per_seed(part, keys)
        columns["n"].append(len(seeds))
        columns["_seeds"].append(seeds)
        columns["_values"].append(values)
        columns["_repeats"].append(repeats)
        first = firsts[key]
        columns["_flat"].append(
            {k[len("config.") :]: v for k, v in first.items() if k.startswith("config.")}
        )
        for k in keys:
            d = stats.describe(values[k])
            for field in ("n", "mean", "std", "low", "high"):
                columns.setdefault(f"{k}.{field}", []).append(getattr(d, field))
    for name, column in columns.items():
        groups[name] = column
    groups["label"] = _labels(list(groups["_overrides"]))
    groups["label"] = _set_apart(groups, [firsts[key]["_path"].parent for key in groups.index])
    groups = groups.sort_values(
        [f"{metric}.mean", "label"], ascending=[False, True], na_position="last", kind="stable"
    )
    return groups.reset_index(drop=True)


# ------------------------------------------------------------------------- comparisons
def _matches(flat: Mapping[str, Any], key: str, wanted: str) -> bool:
    """Does the config (flattened) have ``key=wanted``? ``mining=x`` is mining.strategy=x
    (a group names its option); numbers compare as numbers (0.2 = 0.20)."""
    key = REGISTRIES[key].key if key in REGISTRIES else key
    if key not in flat:
        return False
    value = flat[key]
    if str(value) == wanted or (isinstance(value, bool) and str(value).lower() == wanted.lower()):
        return True
    try:
        return not isinstance(value, bool) and float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def find_baseline(groups: pd.DataFrame, spec: str) -> int:
    """The position in ``groups`` of the one configuration ``spec`` (``KEY=VALUE,...``,
    keys of the run config such as ``mining=batch_hard,mining.memory_size=0``) matches;
    TripletLabError when none or several do."""
    pairs = [p.strip() for p in spec.split(",") if p.strip()]
    if not pairs or not all("=" in p for p in pairs):
        raise TripletLabError(f"--baseline {spec!r}: write KEY=VALUE,... (e.g. mining=batch_hard)")
    wanted = [tuple(s.strip() for s in p.split("=", 1)) for p in pairs]
    found = [
        i for i, flat in enumerate(groups["_flat"]) if all(_matches(flat, k, v) for k, v in wanted)
    ]
    if len(found) == 1:
        return found[0]
    shown = "; ".join(
        f"{m}" + (f" {label}" if label else "")
        for m, label in zip(groups["mining"], groups["label"], strict=True)
    )
    if not found:
        raise TripletLabError(f"--baseline {spec}: no configuration matches; they are: {shown}")
    flats = [groups["_flat"].iloc[i] for i in found]
    skip = set(NOT_CONFIGURATION)
    keys = {k for f in flats for k in f} - skip
    if all({k: f.get(k) for k in keys} == {k: flats[0].get(k) for k in keys} for f in flats):
        raise TripletLabError(
            f"--baseline {spec}: {len(found)} configurations match that differ only by the "
            "folder or summary.csv they come from; summarize without the others"
        )
    raise TripletLabError(
        f"--baseline {spec}: {len(found)} configurations match; add KEY=VALUE pairs to pick one"
    )


def compare_groups(groups: pd.DataFrame, key: str, reference: int = 0) -> pd.DataFrame:
    """Each configuration's ``key`` against the reference's (position ``reference``; 0 is
    the best): columns test ("paired", "welch" or ""), diff (this minus the reference),
    low, high (its 95% interval), p, p_holm (Holm over this key's comparisons), verdict
    (words); the reference's row is NaN with verdict "reference"."""
    ref_values = groups["_values"].iloc[reference][key]
    ref_seeds = groups["_seeds"].iloc[reference]
    out: dict[str, list] = {c: [] for c in ("test", "diff", "low", "high", "p")}
    results = []
    for i, (values, seeds) in enumerate(zip(groups["_values"], groups["_seeds"], strict=True)):
        result = (
            None if i == reference else stats.compare(values[key], ref_values, seeds, ref_seeds)
        )
        results.append(result)
        out["test"].append(result.test if result else "")
        for field in ("diff", "low", "high", "p"):
            out[field].append(getattr(result, field) if result else math.nan)
    frame = pd.DataFrame(out, index=groups.index)
    frame["p_holm"] = stats.holm(frame["p"].tolist())
    frame["verdict"] = [
        stats.REFERENCE if r is None else stats.verdict(r, p)
        for r, p in zip(results, frame["p_holm"], strict=True)
    ]
    return frame
