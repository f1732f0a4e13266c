"""The configuration reference, generated from the schemas: ``docs/configuration.md``.

Every key of every group option, with its default, its allowed values and one line of help,
is read from the schemas (each field's ``setting(default, help, choices=, bound=)``, which
:func:`~tripletlab.config.validate` checks) and the options from the registries
(:mod:`tripletlab.registry`: the package's, the installed plugins') and ``conf/``. ``python -m tripletlab.config_reference``
rewrites the page (``make docs`` does it first); ``tests/test_config_reference.py`` fails when
the committed page and the schemas disagree. No TensorFlow here: Hydra's ``--help`` calls
:func:`user_groups_text` while it composes.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING

from tripletlab import config
from tripletlab.errors import TripletLabError
from tripletlab.options import BOUNDS, metadata
from tripletlab.registry import REGISTRIES
from tripletlab.resources import config_dir

REFERENCE_PATH = Path("docs") / "configuration.md"
# Groups that compose the config but that a user never picks: the option schemas, which each
# option's YAML selects (``- /schema/dataset/digits@_here_``).
_HIDDEN_GROUPS = ("schema",)
# Hydra's own groups a user picks (the others, hydra/job_logging..., are Hydra's business).
_USER_HYDRA_GROUPS = ("hydra/launcher",)
# Presets: groups that set keys of other groups rather than having keys of their own.
PRESET_GROUPS = ("experiment", "hparams_search", "hydra/launcher")


def group_options(group: str) -> tuple[str, ...]:
    """The options of ``group`` a user can pick: a registry's names, else ``conf/<group>/``."""
    if group in REGISTRIES:
        return REGISTRIES[group].names()
    return tuple(sorted(p.stem for p in (config_dir() / group).glob("*.yaml")))


def default_options() -> dict[str, str]:
    """group -> the option ``conf/config.yaml``'s defaults list picks (null ones left out)."""
    data = yaml.safe_load((config_dir() / "config.yaml").read_text(encoding="utf-8"))
    chosen = {}
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                if option is not None:
                    chosen[str(group)] = str(option)
    return chosen


def field_help(schema: type, name: str) -> str:
    """The help of field ``name`` (a subclass that only changes a default keeps it)."""
    return str(metadata(schema, name).get("help", ""))


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def format_value(value: Any) -> str:
    """A default as a user writes it in an override: null, true, ``???`` (required)."""
    if value is MISSING or value == MISSING:
        return "`???` (required)"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def allowed_values(schema: type, f: dataclasses.Field) -> str:
    """What field ``f`` of ``schema`` accepts: its choices, its bound, or its type."""
    optional = "None" in str(f.type)
    meta = metadata(schema, f.name)
    kind = str(f.type).replace(" | None", "").split("[")[0]
    if "choices" in meta:
        text = ", ".join(f"`{v}`" for v in meta["choices"])
    elif kind == "bool":
        text = "`true`, `false`"
    elif "bound" in meta:
        text = f"{kind} {BOUNDS[meta['bound']]}"
    else:
        text = kind
    return f"{text}, or `null`" if optional else text


def _rows(prefix: str, schema: type, skip: str | None = None) -> list[tuple[str, ...]]:
    rows = []
    for f in dataclasses.fields(schema):
        if f.name == skip or dataclasses.is_dataclass(f.type) or f.name in REGISTRIES:
            continue
        if f.name in ("trainer", "eval"):  # nodes, listed in their own sections
            continue
        path = f"{prefix}{f.name}"
        rows.append(
            (
                f"`{path}`",
                format_value(_default(f)),
                allowed_values(schema, f),
                field_help(schema, f.name),
            )
        )
    return rows


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| key | default | allowed | help |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _preset_summary(path: Path) -> str:
    """The first sentence of a preset's header comment."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package") or not text:
            continue
        if line.startswith("#  ") or text.endswith(":") and words:
            words.append(text.rstrip(":") + ".")
            break
        words.append(text)
    sentence = " ".join(words)
    match = re.match(r"(.+?[.:])(\s|$)", sentence)
    return (match.group(1) if match else sentence).rstrip(":").rstrip(".") + "."


def reference_markdown() -> str:
    """docs/configuration.md's text."""
    defaults = default_options()
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from the schemas (tripletlab/config.py, tripletlab/options/) by `python -m tripletlab.config_reference`"
        " (`make docs` runs it). Do not edit: tests/test_config_reference.py fails when this"
        " page and the schemas disagree. -->",
        "",
        "Pick a group's option with `group=option` and set a key with `group.key=value`:",
        "`python run.py dataset=digits model=lenet dataset.max_train=500 trainer.epochs=2`.",
        "`python run.py --cfg job` prints the composed config. A key the chosen option does",
        "not have is an error that names the option's keys; so is a value outside the allowed",
        "ones. The key naming a group's option (`dataset.name`, `mining.strategy`...) is set",
        "by choosing the option, not by hand.",
        "",
    ]
    for group, registry in REGISTRIES.items():
        options = group_options(group)
        name_key = registry.name_key
        out += [f"## {group}", ""]
        listed = ", ".join(
            f"`{o}` (default)" if o == defaults.get(group) else f"`{o}`" for o in options
        )
        out += [f"Options (`{group}=<option>`, sets `{group}.{name_key}`): {listed}.", ""]
        # One table per set of options with the same keys, defaults and help.
        by_rows: dict[tuple, list[str]] = {}
        for option in options:
            rows = tuple(_rows(f"{group}.", registry.schema(option), skip=name_key))
            by_rows.setdefault(rows, []).append(option)
        for rows, same in by_rows.items():
            out += [f"### {', '.join(f'{group}={o}' for o in same)}", ""]
            out += _table(list(rows)) if rows else ["No keys of its own."]
            out.append("")
    for node in ("trainer", "eval"):
        schema = {f.name: f.type for f in dataclasses.fields(config.Config)}[node]
        schema = getattr(config, schema) if isinstance(schema, str) else schema
        out += [f"## {node}", ""] + _table(_rows(f"{node}.", schema)) + [""]
    out += ["## top level", ""] + _table(_rows("", config.Config)) + [""]
    out += [
        "## Presets",
        "",
        "These groups set keys of the groups above (read the YAML file for the exact values).",
        "",
    ]
    for group in PRESET_GROUPS:
        out += [f"### {group}", ""]
        for option in group_options(group):
            summary = _preset_summary(config_dir() / group / f"{option}.yaml")
            out.append(f"- `{group}={option}`: {summary}")
        out.append("")
    out += [
        "## Resuming",
        "",
        "A rerun into a run folder resumes (with `trainer.resume=auto`) only when its config",
        "equals the saved one apart from these keys (a group covers all its keys): "
        + ", ".join(f"`{k}`" for k in config.RESUME_NEUTRAL_KEYS)
        + ".",
        "",
    ]
    return "\n".join(out)


def user_groups_text() -> str:
    """The groups a user picks, one line each (``dataset: cars196, cub200, ...``), as Hydra
    knows them while it composes (its search path included); ``--help`` prints it in place
    of Hydra's list, which also shows the internal ``schema/*`` groups."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()
    lines = []

    def walk(parent: str) -> None:
        for group in loader.list_groups(parent):
            name = f"{parent}/{group}" if parent else group
            if name.split("/")[0] in _HIDDEN_GROUPS:
                continue
            hydra_own = name == "hydra" or name.startswith("hydra/")
            if hydra_own and not any(
                g == name or g.startswith(name + "/") for g in _USER_HYDRA_GROUPS
            ):
                continue
            options = loader.get_group_options(name, ObjectType.CONFIG)
            if options and (not hydra_own or name in _USER_HYDRA_GROUPS):
                lines.append(f"{name}: {', '.join(sorted(options))}")
            walk(name)

    walk("")
    return "\n".join(sorted(lines))


def write_reference(path: Path) -> bool:
    """Write the reference to ``path``; True when it changed."""
    text = reference_markdown()
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    if old != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return old != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tripletlab.config_reference", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", type=Path, default=REFERENCE_PATH, help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        changed = write_reference(args.output)
    except TripletLabError as err:  # e.g. a broken plugin: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.output}: {'written' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
