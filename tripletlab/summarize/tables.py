"""What a summary shows: the markdown table (:func:`report`) and the statistics per
configuration and metric (:func:`stats_frame`, written as ``summary_stats.csv``).

Cells are strings: a missing value is ``-``, never 0.
"""

from __future__ import annotations

import math

import pandas as pd

from tripletlab.config import METRICS
from tripletlab.run_folder import FINISHED
from tripletlab.summarize import stats
from tripletlab.summarize.groups import TABLE_METRICS, compare_groups, group_rows
from tripletlab.summarize.rows import _missing

# summary_stats.csv: one row per configuration and metric.
STATS_COLUMNS = [
    "rank",
    "model",
    "mining",
    "setting",
    "metric",
    "n",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "reference",
    "test",
    "diff",
    "diff_low",
    "diff_high",
    "p",
    "p_holm",
    "verdict",
]

EXPLAINED = (
    "n: seeds of the finished runs (k of n: k have a value); mean ± sample std over seeds; "
    "95% CI: Student-t interval of the mean. Δ: this configuration minus the {ref}, with its "
    "95% interval, from a paired t-test over the seeds both ran (when they ran the same "
    "seeds) or Welch's t-test; p: Holm-adjusted over the table's comparisons, which the last "
    "column puts in words."
)


def _fmt(mean: float, std: float, n: int, digits: int = 4) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    if n == 1 or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _interval(low: float, high: float, n: int, signed: bool = False) -> str:
    if n == 1:
        return "one seed"
    if n == 0 or math.isnan(low):
        return "-"
    sign = "+" if signed else ""
    return f"[{low:{sign}.4f}, {high:{sign}.4f}]"


def _p(p: float) -> str:
    if math.isnan(p):
        return "-"
    if p < 0.0001:
        return "<0.0001"
    # Beside its verdict, 0.04996 must not read 0.0500: more digits until it is clear.
    digits = 4
    while round(p, digits) == stats.ALPHA and p != stats.ALPHA and digits < 12:
        digits += 1
    return f"{p:.{digits}f}"


def _delta(row: pd.Series) -> str:
    """The difference with its interval, or "-": a difference without its interval (a side
    with one seed: no test) is not a result, and the verdict says why."""
    if row["verdict"] in (stats.REFERENCE, stats.NO_RESULT) or math.isnan(row["diff"]):
        return "-"
    if not row["test"]:
        return "-"
    return f"{row['diff']:+.4f} {_interval(row['low'], row['high'], 2, True)}"


def _table_metrics(metric: str) -> list[str]:
    return list(dict.fromkeys([metric, *TABLE_METRICS]))


def comparison_table(
    groups: pd.DataFrame, metric: str, reference: int = 0, ref_name: str = "best"
) -> pd.DataFrame:
    """The markdown table's cells (strings), one row per configuration: for ``metric``
    mean ± std, the 95% interval and the comparison with the configuration at position
    ``reference``; the other table metrics as mean ± std."""
    name = lambda v: "?" if _missing(v) else str(v)  # noqa: E731
    table = pd.DataFrame(
        {
            "rank": [str(i) for i in range(1, len(groups) + 1)],
            "model": groups["model"].map(name),
            "mining": groups["mining"].map(name),
        }
    )
    if groups["label"].astype(bool).any():
        table["setting"] = groups["label"].map(lambda v: v or "(base)")
    # The mean and interval are over the seeds with a value: say so when some have none.
    table["n"] = [
        str(n) if k == n else f"{k} of {n}"
        for k, n in zip(groups[f"{metric}.n"], groups["n"], strict=True)
    ]
    table["status"] = groups["status"]
    m = metric
    table[f"{m} (mean ± std)"] = [
        _fmt(mean, std, n)
        for mean, std, n in zip(
            groups[f"{m}.mean"], groups[f"{m}.std"], groups[f"{m}.n"], strict=True
        )
    ]
    table["95% CI (t)"] = [
        _interval(lo, hi, n)
        for lo, hi, n in zip(groups[f"{m}.low"], groups[f"{m}.high"], groups[f"{m}.n"], strict=True)
    ]
    compared = compare_groups(groups, m, reference)
    table[f"Δ vs {ref_name} [95% CI]"] = [_delta(r) for _, r in compared.iterrows()]
    table["test"] = compared["test"].map(
        lambda t: {"paired": "paired", "welch": "Welch"}.get(t, "-")
    )
    table["p (Holm)"] = compared["p_holm"].map(_p)
    table[f"vs {ref_name}"] = compared["verdict"]
    for other in _table_metrics(metric)[1:]:
        table[other] = [
            _fmt(mean, std, n)
            for mean, std, n in zip(
                groups[f"{other}.mean"], groups[f"{other}.std"], groups[f"{other}.n"], strict=True
            )
        ]
    for column, key, digits in (("train s", "train_seconds", 1), ("img/s", "images_per_second", 0)):
        table[column] = [
            f"{v:.{digits}f}" if n else "-"
            for v, n in zip(groups[f"{key}.mean"], groups[f"{key}.n"], strict=True)
        ]
    return table


def stats_frame(groups: pd.DataFrame, reference: int = 0) -> pd.DataFrame:
    """:data:`STATS_COLUMNS`, one row per configuration (rank order) and metric; each
    metric's comparisons with the reference are one Holm family."""
    records = []
    for metric in METRICS:
        compared = compare_groups(groups, metric, reference)
        for i, (group, comp) in enumerate(
            zip(groups.to_dict("records"), compared.to_dict("records"), strict=True)
        ):
            records.append(
                {
                    "rank": i + 1,
                    "model": group["model"],
                    "mining": group["mining"],
                    "setting": group["label"],
                    "metric": metric,
                    **{
                        c: group[f"{metric}.{k}"]
                        for c, k in (("n", "n"), ("mean", "mean"), ("std", "std"))
                    },
                    "ci_low": group[f"{metric}.low"],
                    "ci_high": group[f"{metric}.high"],
                    "reference": i == reference,
                    "test": comp["test"],
                    "diff": comp["diff"],
                    "diff_low": comp["low"],
                    "diff_high": comp["high"],
                    "p": comp["p"],
                    "p_holm": comp["p_holm"],
                    "verdict": comp["verdict"],
                }
            )
    return pd.DataFrame(records, columns=STATS_COLUMNS)


def markdown_table(table: pd.DataFrame) -> str:
    """A frame of strings as a markdown table with aligned columns (readable as text too)."""
    escaped = table.map(lambda c: str(c).replace("|", "\\|"))
    escaped.columns = [str(c).replace("|", "\\|") for c in table.columns]
    # disable_numparse: cells are already formatted ("0.8500 ± 0.0557", "1").
    return escaped.to_markdown(index=False, disable_numparse=True) + "\n"


def _name(group: dict) -> str:
    parts = [str(group["model"]), str(group["mining"]), str(group["label"] or "")]
    return " ".join(p for p in parts if p and p != "None") or "?"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def report(
    rows: pd.DataFrame,
    metric: str,
    title: str | None = None,
    groups: pd.DataFrame | None = None,
    reference: int = 0,
    ref_name: str = "best",
) -> str:
    """The markdown report: the comparison table, how to read it, then the runs that did
    not finish. ``groups``: :func:`group_rows` (rows, metric), when already computed."""
    groups = group_rows(rows, metric) if groups is None else groups
    parts = [f"# {title}"] if title else []
    parts.append(
        f"{_plural(len(rows), 'run')}, {_plural(len(groups), 'configuration')}, "
        f"sorted by {metric}.\n"
    )
    parts.append(markdown_table(comparison_table(groups, metric, reference, ref_name)))
    what = "best configuration" if ref_name == "best" else "baseline"
    parts.append(EXPLAINED.format(ref=what))
    repeated = [
        f"{_name(g)}: seed {seed} ran {runs} times"
        for g in groups.to_dict("records")
        for seed, runs in g["_repeats"].items()
    ]
    if repeated:
        parts.append(
            "A seed that ran more than once counts once (the mean of its runs): "
            + "; ".join(repeated)
            + "."
        )
    failed = rows[~rows["status"].isin(FINISHED)]
    if len(failed):
        lines = [f"{_plural(len(failed), 'run')} did not finish:"]
        for r in failed.to_dict("records"):
            error = r["error"] or "no error recorded"
            if len(error) > 300:
                error = error[:297] + "..."
            lines.append(f"- `{r['run_dir']}` ({r['status']}): {error}")
        parts.append("\n".join(lines))
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"
