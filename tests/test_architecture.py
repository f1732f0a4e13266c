"""The package's layering: one owner for the run folder's format, reuse without training."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tripletlab"


@pytest.mark.parametrize("name", ["summary.json", "metrics.csv"])
def test_run_folder_file_names_live_in_one_module(name):
    owners = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if name in p.read_text()
    )
    assert owners == ["run_folder.py"]


@pytest.mark.parametrize(
    "module",
    [
        "tripletlab.reuse.evaluate",
        "tripletlab.reuse.visualize",
        "tripletlab.reuse.embed",
        "tripletlab.sweep",
        "tripletlab.summarize",
        "tripletlab.reuse",
        "tripletlab.inference",
    ],
)
def test_reuse_sweeps_and_summaries_do_not_import_the_training_loop(module):
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.startswith('tripletlab.training')); "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------ imports and sizes
ROOT = PACKAGE.parent
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The tripletlab modules ``path`` imports (``from a import b``: a.b when b is a
    module); top level only: not inside a function, a class or ``if TYPE_CHECKING``."""
    import ast

    modules = _modules()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also the bodies of top-level try/except and if blocks
        nodes = [n for stmt in nodes for n in ast.walk(stmt) if not _deferred(stmt)]
    found = set()
    package = (
        _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    )
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules}


def _deferred(stmt) -> bool:
    import ast

    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    return isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.dump(stmt.test)


def test_no_import_cycles():
    """Top-level imports between tripletlab's modules form no cycle (Tarjan's SCCs)."""
    graph = {name: _imports(path, top_level_only=True) for name, path in _modules().items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_cli_import_below_cli():
    """cli/ is the top layer: no module outside it imports it, not even inside a function."""
    offenders = {
        name: sorted(
            m for m in _imports(path, top_level_only=False) if m.startswith("tripletlab.cli")
        )
        for name, path in _modules().items()
        if not name.startswith("tripletlab.cli")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_module_over_500_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


# ------------------------------------------------------------------ tests mirror the package
# Test files named after no module, each reviewed: suites across modules (an issue's
# attacks, the docs' facts, whole runs killed at each write) and the repository's own checks.
ACROSS_MODULES = {
    "test_architecture.py": "the package's layering (this file)",
    "test_docs_facts.py": "facts in README and docs/",
    "test_packaging.py": "the wheel and the console scripts",
    "test_plugin_example.py": "examples/tripletlab-plugin-example installed",
    "test_reality_check.py": "scripts/reality_check.sh",
    "test_mkdocs_hooks.py": "scripts/mkdocs_hooks.py (the built site)",
    "test_attack_durability.py": "issue 25's locks, attacked",
    "test_attack_faults.py": "issue 25's 'every fault one line', attacked",
    "test_attack_plugins.py": "issue 26's plugins and _target_, attacked",
    "test_attack_replicas.py": "issue 25's 'replicas equal one device', attacked",
    "cli/test_commands.py": "every console command",
    "data/test_memory_bounds.py": "images, pipeline and the stream=auto decision together",
    "losses/test_migration.py": "the migration tables of docs/losses.md",
    "tracking/test_trackers.py": "TensorBoard and MLflow on one sweep",
    "training/test_crash_consistency.py": "a run killed at each file-system write",
}


def _tested_module(test: Path) -> Path | None:
    """The module or package ``tests/<dir>/test_<name>[_<aspect>].py`` tests:
    ``tripletlab/<dir>/<name>``, the longest such name that exists (``test_attack_<name>``
    attacks it; ``tests/<dir>/test_<dir>.py`` the package ``<dir>``)."""
    rel = test.relative_to(ROOT / "tests")
    folder = PACKAGE / rel.parent
    words = test.stem.removeprefix("test_").removeprefix("attack_").split("_")
    for n in range(len(words), 0, -1):
        name = "_".join(words[:n])
        own = [folder / "__init__.py"] if name == folder.name else []  # tests/data/test_data
        for path in (folder / f"{name}.py", folder / name / "__init__.py", *own):
            if path.exists():
                return path
    return None


def test_each_test_file_lives_beside_the_module_it_tests():
    """tests/ mirrors tripletlab/: tests/training/test_loop_missing_metric.py tests
    tripletlab/training/loop.py; a file named after no module there is reviewed above."""
    tests = sorted((ROOT / "tests").rglob("test_*.py"))
    unplaced = {str(t.relative_to(ROOT / "tests")) for t in tests if _tested_module(t) is None}
    assert unplaced - set(ACROSS_MODULES) == set()
    assert set(ACROSS_MODULES) <= {str(t.relative_to(ROOT / "tests")) for t in tests}
    assert _tested_module(ROOT / "tests" / "training" / "test_loop_missing_metric.py") == (
        PACKAGE / "training" / "loop.py"
    )


# ------------------------------------------------------------------ options
def _option_files(group: str, name: str) -> list[str]:
    """Every file of the repository option ``name`` of ``group`` needs: its entry (schema,
    checks, hooks), its code, its brute force (a strategy), its YAML."""
    import inspect

    from tripletlab.registry import REGISTRIES, load_target

    registry = REGISTRIES[group]
    entry, code = registry.option(name), registry.get(name)
    parts = [getattr(code, f) for f in ("load", "batches") if hasattr(code, f)]  # a source
    objects = [registry.schema(name), *(parts or [code])]
    if getattr(entry, "reference", None) is not None:
        objects.append(load_target(entry.reference, "the brute force"))
    files = {Path(inspect.getsourcefile(o)).resolve() for o in objects}
    files |= {Path(inspect.getsourcefile(sys.modules[registry.declarations]))}
    files.add(ROOT / "conf" / group / f"{name}.yaml")
    return sorted(str(f.relative_to(ROOT)) for f in files if f.is_relative_to(ROOT))


def test_the_files_an_option_touches():
    """An option is its entry and code plus one YAML file (and, here, its tests)."""
    assert _option_files("mining", "easy_positive") == [
        "conf/mining/easy_positive.yaml",
        "tripletlab/losses/reference.py",
        "tripletlab/losses/strategies.py",
        "tripletlab/options/mining.py",
    ]
    assert _option_files("model", "lenet") == [
        "conf/model/lenet.yaml",
        "tripletlab/models.py",
        "tripletlab/options/model.py",
    ]
    assert _option_files("dataset", "digits") == [
        "conf/dataset/digits.yaml",
        "tripletlab/data/digits.py",
        "tripletlab/options/dataset.py",
    ]
    assert _option_files("logger", "mlflow") == [
        "conf/logger/mlflow.yaml",
        "tripletlab/options/logger.py",
        "tripletlab/tracking/mlflow.py",
    ]


def _branches_on(name: str) -> re.Pattern:
    """``== "name"``, ``"name":`` (a table's key), ``in (..., "name"``: code that knows it."""
    quoted = rf"""["']{name}["']"""
    return re.compile(rf"(==|!=)\s*{quoted}|{quoted}\s*(==|!=|:)|\bin\s*\([^)]*{quoted}")


@pytest.mark.parametrize("group", ["mining", "model", "dataset", "logger"])
def test_only_an_options_own_files_know_its_name(group):
    """Nothing but an option's entry, its code's package and bench/ (which compares with
    other libraries' implementations by name) branches on an option's name."""
    from tripletlab.registry import REGISTRIES

    registry = REGISTRIES[group]
    home = ROOT / registry.home.replace(".", "/")
    allowed = [home, home.with_suffix(".py"), ROOT / registry.declarations.replace(".", "/")]
    allowed = [p.with_suffix(".py") if p.name == group else p for p in allowed] + [
        PACKAGE / "bench"
    ]
    offenders = []
    for name in registry.registered():
        if name == "none":  # logger=none: also the word for nothing ("none", "off"...)
            continue
        pattern = _branches_on(name)
        for path in PACKAGE.rglob("*.py"):
            if any(path == a or a in path.parents for a in allowed):
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            offenders += [
                f"{path.relative_to(ROOT)}:{i} {name}"
                for i, line in enumerate(lines, 1)
                if pattern.search(line)
            ]
    assert offenders == []


@pytest.mark.parametrize("group", ["dataset", "model", "mining", "sampler", "logger", "distribute"])
def test_every_registered_option_has_a_schema_a_yaml_and_a_test(group):
    import dataclasses

    from tripletlab.registry import REGISTRIES

    registry = REGISTRIES[group]
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("*.py"))
    for name in registry.registered():
        schema = registry.schema(name)
        assert dataclasses.is_dataclass(schema) and issubclass(schema, registry.base), name
        assert (ROOT / "conf" / group / f"{name}.yaml").is_file(), name
        assert re.search(rf"""{group}={name}\b|["']{name}["']""", tests), (
            f"no test names {group}={name}"
        )
