"""docs/configuration.md is generated from the schemas and stays in step with them; the
tables it prints are the ones validate() checks; ``--help`` lists the groups a user picks."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tripletlab import config
from tripletlab.api import compose
from tripletlab.config_reference import (
    REFERENCE_PATH,
    field_help,
    group_options,
    reference_markdown,
)
from tripletlab.errors import ConfigError
from tripletlab.options import BOUNDS, metadata
from tripletlab.registry import REGISTRIES

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reference_matches_the_schemas():
    committed = (ROOT / REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == reference_markdown(), (
        "docs/configuration.md is stale: run `python -m tripletlab.config_reference`"
    )


def _schemas():
    for registry in REGISTRIES.values():
        yield registry.base
        yield from registry.schemas().values()
    yield from (config.TrainerConfig, config.EvalConfig, config.Config)


def test_every_key_has_one_line_of_help():
    for schema in _schemas():
        for f in dataclasses.fields(schema):
            if f.default_factory is not dataclasses.MISSING:
                continue  # a node (dataset, trainer...), documented key by key
            text = field_help(schema, f.name)
            assert text and "\n" not in text, f"{schema.__name__}.{f.name} has no help"


def _sections(markdown: str) -> dict[str, str]:
    """'### dataset=fashion_mnist, dataset=mnist' -> its table, one entry per option."""
    sections = {}
    for block in re.split(r"^## ", markdown, flags=re.M)[1:]:
        title, _, body = block.partition("\n")
        for sub in re.split(r"^### ", body, flags=re.M)[1:] or [body]:
            head, _, table = sub.partition("\n")
            for option in head.split(", ") if "=" in head else [title]:
                sections[option.strip()] = table
    return sections


@pytest.mark.parametrize("group", list(REGISTRIES))
def test_each_option_lists_the_keys_it_composes_to(group):
    """The reference's table of each option holds exactly the keys that composing it gives,
    with their composed defaults (a key added to a schema, or a YAML default, shows)."""
    sections = _sections(reference_markdown())
    name_key = REGISTRIES[group].name_key
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        required = [f.name for f in dataclasses.fields(REGISTRIES[group].schema(option))]
        required = [
            k
            for k in required
            if k != name_key and OmegaConf.is_missing(compose_keys(group, option), k)
        ]
        overrides += [f"{group}.{k}={'/data' if k == 'root' else 'a.b'}" for k in required]
        node = compose(overrides)[group]
        table = sections[f"{group}={option}"]
        listed = dict(re.findall(r"^\| `([\w.]+)` \| (.+?) \|", table, flags=re.M))
        expected = {f"{group}.{k}" for k in node if k != name_key}
        assert set(listed) == expected, option
        for key in node:
            if key != name_key and key not in required:
                shown = str(OmegaConf.to_container(node)[key])
                written = listed[f"{group}.{key}"].strip("`")
                assert written == {"None": "null", "True": "true", "False": "false"}.get(
                    shown, shown
                ), f"{group}={option} {key}"


def compose_keys(group, option):
    """The option's schema as a config node (to find its required keys)."""
    return OmegaConf.structured(REGISTRIES[group].schema(option))


# Options that have every key with a closed set of values or a bound between them.
BASE = {"dataset": "image_folder", "model": "small_cnn", "mining": "easy_positive"}


def _checked(kind):
    """(path, its choices or bound) of every key of the base config's options and nodes
    that has them, read from the schemas' metadata."""
    nodes = [
        (f"{g}.", REGISTRIES[g].schema(BASE.get(g, "pk" if g == "sampler" else "none")))
        for g in REGISTRIES
    ]
    nodes += [("trainer.", config.TrainerConfig), ("eval.", config.EvalConfig), ("", config.Config)]
    return [
        (prefix + f.name, metadata(schema, f.name)[kind])
        for prefix, schema in nodes
        for f in dataclasses.fields(schema)
        if kind in metadata(schema, f.name)
    ]


@pytest.fixture(scope="module")
def base_config():
    # Options that have every key with a closed set of values (mining.negatives: easy_positive).
    return compose(
        ["dataset=image_folder", "dataset.root=/data", "model=small_cnn", "mining=easy_positive"]
    )


def _rejected(cfg, path, value) -> str:
    changed = OmegaConf.create(OmegaConf.to_container(cfg))
    changed = config.typed(OmegaConf.to_container(changed))
    OmegaConf.update(changed, path, value)
    with pytest.raises(ConfigError) as error:
        config.validate(changed)
    return str(error.value)


@pytest.mark.parametrize("path, choices", _checked("choices"))
def test_validate_checks_the_choices_the_reference_prints(base_config, path, choices):
    if isinstance(choices[0], int):
        message, bogus = _rejected(base_config, path, 2), "2"
    else:
        message, bogus = _rejected(base_config, path, "bogus"), "'bogus'"
    listed = ", ".join(map(str, choices))
    assert message == f"{path}={bogus} is not valid; choose one of: {listed}"
    assert ", ".join(f"`{v}`" for v in choices) in reference_markdown()


@pytest.mark.parametrize("path, bound", _checked("bound"))
def test_validate_checks_the_ranges_the_reference_prints(base_config, path, bound):
    text = BOUNDS[bound]
    value = {"> 0": 0, ">= 0": -1, "in (0, 1)": 1}[text]
    message = _rejected(base_config, path, value)
    if text == "in (0, 1)":
        assert re.fullmatch(
            rf"{re.escape(path)}=1(\.0)? is not valid; it must be between 0 and 1", message
        )
    else:
        assert re.fullmatch(rf"{re.escape(path)}=-?[\d.]+ is not valid; it must be {text}", message)
    row = re.search(rf"^\| `{re.escape(path)}` \|[^|]+\| ([^|]+) \|", reference_markdown(), re.M)
    assert row and text in row.group(1), path


def test_help_lists_the_groups_a_user_picks_and_hides_the_schemas():
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    groups_part = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = dict(re.findall(r"^([\w/]+): (.+)$", groups_part, flags=re.M))
    conf = ROOT / "conf"
    user_groups = {
        str(d.relative_to(conf)) for d in conf.rglob("*") if d.is_dir() and any(d.glob("*.yaml"))
    }
    assert set(listed) == user_groups
    for group in REGISTRIES:  # what Hydra finds is what the reference documents
        assert listed[group].split(", ") == sorted(group_options(group))
    assert "parallel" in listed["hydra/launcher"].split(", ")
    assert "schema" not in result.stdout.split("== Config ==")[0]
