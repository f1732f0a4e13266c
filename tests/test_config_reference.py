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

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reference_matches_the_schemas():
    committed = (ROOT / REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == reference_markdown(), (
        "docs/configuration.md is stale: run `python -m tripletlab.config_reference`"
    )


def _schemas():
    for table in config.SCHEMAS.values():
        yield from table.values()
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


@pytest.mark.parametrize("group", list(config.SCHEMAS))
def test_each_option_lists_the_keys_it_composes_to(group):
    """The reference's table of each option holds exactly the keys that composing it gives,
    with their composed defaults (a key added to a schema, or a YAML default, shows)."""
    sections = _sections(reference_markdown())
    name_key = config.NAME_KEYS[group]
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        if group == "dataset" and option not in ("fashion_mnist", "mnist", "digits"):
            overrides.append("dataset.root=/data")  # required: no default
        node = compose(overrides)[group]
        table = sections[f"{group}={option}"]
        listed = dict(re.findall(r"^\| `([\w.]+)` \| (.+?) \|", table, flags=re.M))
        expected = {f"{group}.{k}" for k in node if k != name_key}
        assert set(listed) == expected, option
        for key in node:
            if key != name_key and key != "root":
                shown = str(OmegaConf.to_container(node)[key])
                written = listed[f"{group}.{key}"].strip("`")
                assert written == {"None": "null", "True": "true", "False": "false"}.get(
                    shown, shown
                ), f"{group}={option} {key}"


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


@pytest.mark.parametrize("path", list(config.CHOICES))
def test_validate_checks_the_choices_the_reference_prints(base_config, path):
    message = _rejected(base_config, path, "bogus")
    assert message == f"{path}='bogus' is not valid; choose one of: " + ", ".join(
        config.CHOICES[path]
    )
    group, _, key = path.rpartition(".")
    if config.NAME_KEYS.get(group) == key:  # an option of a group: its "Options" line
        options = re.search(rf"^Options \(`{group}=.*$", reference_markdown(), re.M).group(0)
        assert set(re.findall(r"`(\w+)`(?:,| \(|\.)", options)) == set(config.CHOICES[path])
    else:
        assert ", ".join(f"`{v}`" for v in config.CHOICES[path]) in reference_markdown()


@pytest.mark.parametrize(
    "path, bound",
    [(p, "> 0") for p in config.POSITIVE_KEYS] + [(p, ">= 0") for p in config.NON_NEGATIVE_KEYS],
)
def test_validate_checks_the_ranges_the_reference_prints(base_config, path, bound):
    value = 0 if bound == "> 0" else -1
    message = _rejected(base_config, path, value)
    assert re.fullmatch(rf"{re.escape(path)}=-?[\d.]+ is not valid; it must be {bound}", message)
    row = re.search(rf"^\| `{re.escape(path)}` \|[^|]+\| ([^|]+) \|", reference_markdown(), re.M)
    assert row and bound in row.group(1), path


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
    for group in config.SCHEMAS:  # what Hydra finds is what the reference documents
        assert listed[group].split(", ") == sorted(group_options(group))
    assert "parallel" in listed["hydra/launcher"].split(", ")
    assert "schema" not in result.stdout.split("== Config ==")[0]
