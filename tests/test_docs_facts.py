"""Facts in README and docs/ that a reader copies, checked against what they describe.

- Figures: every paragraph of README.md and docs/*.md that names a file under results/ (a
  link or a code span; a "Source" box together with the table under it) has each of its
  measured figures (a number with 3 or more decimals, or a percentage with one) in one of the
  files it names, as written there or rounded from a longer value. A figure derived from
  measured ones (a difference, a ratio) is written with fewer decimals, or not in such a
  paragraph.
- The extras and commands of docs/setup.md against pyproject.toml and the Makefile.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from tests.helpers import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULT_PATH = re.compile(r"results/[A-Za-z0-9_.*-]+[A-Za-z0-9*]")
# 0.9277, 766.2%, 59.0% ... not 0.5 or 2026-11-28 or a commit hash, nor a bound or an
# estimate ("within 0.010", "about 0.007")
FIGURE = re.compile(r"(?<![\w.-])(?<!about )(?<!within )(\d+\.\d{3,}|\d+\.\d+(?=%))(?![\w.])")
NUMBER = re.compile(r"-?\d+\.\d+(?:[eE]-?\d+)?")


def _blocks(text: str) -> list[str]:
    """Paragraphs; a "Source" admonition keeps the table that follows it."""
    text = re.sub(r"(?s)```.*?```", "", text)  # code blocks: commands, not figures
    parts = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    out: list[str] = []
    for part in parts:
        if out and part.lstrip().startswith("|") and out[-1].lstrip().startswith("!!!"):
            out[-1] += "\n" + part
        else:
            out.append(part)
    return out


def _files(block: str) -> list[Path]:
    found = []
    for name in RESULT_PATH.findall(block):
        found += sorted(ROOT.glob(name)) or [ROOT / name]
    return found


def _prose(block: str) -> str:
    """The block without its results/ paths and code spans (commands, formulas)."""
    return re.sub(r"`[^`]*`", "", RESULT_PATH.sub("", block))


def _cases():
    for page in PAGES:
        for block in _blocks(page.read_text(encoding="utf-8")):
            files = _files(block)
            if files:
                yield page, block, files


CASES = list(_cases())


def _present(figure: str, texts: list[str]) -> bool:
    want = Decimal(figure)
    places = Decimal(1).scaleb(want.as_tuple().exponent)
    for text in texts:
        if figure in text:
            return True
        for number in NUMBER.findall(text):
            value = Decimal(number)
            for rounding in (ROUND_HALF_UP, ROUND_HALF_EVEN):
                if value.quantize(places, rounding=rounding) == want:
                    return True
                if (value * 100).quantize(places, rounding=rounding) == want:  # a share as %
                    return True
    return False


def test_pages_name_results_files():
    assert len(CASES) >= 10  # the test has something to check


@pytest.mark.parametrize(
    ("page", "block", "files"),
    CASES,
    ids=[f"{p.name}:{i}" for i, (p, _, _) in enumerate(CASES)],
)
def test_each_figure_is_in_the_results_file_it_names(page, block, files):
    missing_files = [str(f.relative_to(ROOT)) for f in files if not f.is_file()]
    assert not missing_files, f"{page.name} names missing files: {missing_files}"
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    prose = _prose(block)
    absent = [f for f in FIGURE.findall(prose) if not _present(f, texts)]
    assert not absent, (
        f"{page.name}: {absent} not in {[str(f.relative_to(ROOT)) for f in files]}:\n{block}"
    )


def _section(text: str, start: str) -> str:
    return text[text.index(start) :]


def test_setup_lists_every_extra_and_what_make_test_installs():
    setup = (ROOT / "docs" / "setup.md").read_text(encoding="utf-8")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    table = re.findall(r"^\| `([a-z, `]+)` \|", _section(setup, "| extra | installs |"), re.M)
    listed = {name.strip(" `") for row in table for name in row.split(",")}
    assert listed == set(extras)
    makefile = (ROOT / "Makefile").read_text()
    test_extras = re.search(r"^TEST_EXTRAS := (.+)$", makefile, re.M).group(1).split(",")
    sentence = re.search(r"`make test` adds the\s+extras (.+?) that the tests use", setup, re.S)
    assert set(re.findall(r"`([a-z]+)`", sentence.group(1))) == set(test_extras)


def test_setup_says_which_commands_take_overrides():
    """Every console command in the table with ``[key=value ...]`` accepts overrides, and
    those without do not (their parser has no free arguments)."""
    import importlib

    setup = (ROOT / "docs" / "setup.md").read_text(encoding="utf-8")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    rows = dict(re.findall(r"^\| `(tripletlab-[a-z]+) ([^`]*)` \|", setup, re.M))
    assert set(rows) == set(scripts)
    for command, target in scripts.items():
        source = Path(importlib.import_module(target.split(":")[0]).__file__).read_text()
        takes = "add_overrides" in source or "hydra" in source.lower()
        assert ("key=value" in rows[command]) == takes, command


# The pages that report measurements. The others describe behaviour: their numbers are
# defaults, tolerances and constants (the configuration reference is generated and checked
# by test_config_reference).
MEASURING = {"README.md", "benchmarks.md", "after-training.md", "losses.md", "data.md"}


def test_every_measured_figure_names_its_results_file():
    """A paragraph with a measured figure (3+ decimals, or a percentage with one) names the
    results/ file it comes from, or links the outside source it quotes."""
    unsourced = []
    for page in PAGES:
        if page.name not in MEASURING:
            continue
        for block in _blocks(page.read_text(encoding="utf-8")):
            external = "https://" in block
            if FIGURE.findall(_prose(block)) and not _files(block) and not external:
                unsourced.append(f"{page.name}: {block[:200]}")
    assert not unsourced, "\n\n".join(unsourced)


def test_the_default_sweep_grid_is_what_its_comment_and_docs_say():
    """tripletlab-sweep without a model= or mining= axis: the comment above DEFAULT_GRID
    (its size), docs/sweeps.md's first example (its names and size) and the grid by hand
    there agree with DEFAULT_GRID, and every name in it is a registered option."""
    import math

    from tripletlab.cli import sweep
    from tripletlab.registry import REGISTRIES

    grid = sweep.DEFAULT_GRID
    sizes = [len(values) for values in grid.values()]
    source = Path(sweep.__file__).read_text(encoding="utf-8")
    said = re.search(r"# The default grid, (\d+) x (\d+) = (\d+) jobs", source)
    assert [int(x) for x in said.groups()] == [*sizes, math.prod(sizes)]
    page = (ROOT / "docs" / "sweeps.md").read_text(encoding="utf-8")
    models, strategies, jobs = re.search(
        r"^\./sweep\.sh +# (.+) x (.+): (\d+) jobs$", page, re.M
    ).groups()
    assert (models.split(", "), strategies.split(", ")) == (
        list(grid["model"]),
        list(grid["mining"]),
    )
    assert int(jobs) == math.prod(sizes)
    by_hand = " ".join(f"{key}={','.join(values)}" for key, values in grid.items())
    assert f"python run.py -m {by_hand}   # the same grid by hand" in page
    for group, names in grid.items():
        for name in names:
            REGISTRIES[group].check(name)


def test_no_wrapped_line_becomes_a_quote():
    """A line wrapped so that it starts with '>=' or '> 0.5' renders as a blockquote on the
    site (found by looking at docs/benchmarks.md in a browser)."""
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            assert not re.match(r">\s*[=<\d]", line), f"{page.name}:{number}: {line}"
