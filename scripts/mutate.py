"""Mutation testing of one module: ``make mutate MODULE=tripletlab/training/memory.py``.

mutmut (settings: ``[tool.mutmut]`` in pyproject.toml) runs on a copy of the working tree
under /tmp, never on the checkout: mutmut 3 writes the mutated package into ``mutants/`` and
the tests import it from there (``mutants/`` comes first on ``sys.path``; the editable
install's finder only answers what that path does not). The module's tests are its mirrored
test file (``tripletlab/a/b.py`` -> ``tests/a/test_b.py``, else ``tests/test_b.py``) plus the
files in ``EXTRA_TESTS``; ``TESTS=...`` replaces them. ``REF=HEAD`` mutates a commit instead
of the working tree (the test files still come from the checkout). ``SAMPLE=N`` (with
``SEED``) tests a seeded sample of N mutants where the full set would take hours.

Prints the killed / survived / timeout counts and the surviving mutants' names; ``mutmut
show NAME`` in the copy prints one's diff.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("TRIPLETLAB_MUTATE_DIR", "/tmp/tripletlab-mutate"))

# Test files beyond the mirrored one, where a module's behaviour is also (or only) checked.
EXTRA_TESTS = {
    "tripletlab/training/memory.py": ["tests/training/test_memory_fifo.py"],
    "tripletlab/training/steps.py": ["tests/training/test_memory_fifo.py"],
    "tripletlab/losses/strategies.py": [
        "tests/losses/test_migration.py",
        "tests/losses/test_blocked.py",  # the blocked form and its size rule (_in_form)
    ],
    "tripletlab/losses/pieces.py": ["tests/losses/test_engines.py"],
    "tripletlab/reuse/index.py": [
        "tests/reuse/test_index_parameters.py",
        "tests/reuse/test_index_open.py",
    ],
    "tripletlab/lease_lock.py": [
        "tests/test_lease_lock_takeover.py",
        "tests/test_lease_lock_records.py",
    ],
    # The package has no mirrored test files; with PYTEST_ARGS="--deselect
    # tests/test_credentials.py::test_the_traceback_of_a_bug_in_a_command_is_masked".
    **{
        f"tripletlab/credentials/{name}.py": [
            "tests/test_credentials.py",
            "tests/test_credentials_edges.py",
        ]
        for name in ("detection", "gate", "redaction")
    },
    "tripletlab/summarize/__init__.py": ["tests/test_summarize.py"],
    "tripletlab/run_folder.py": ["tests/test_run_folder_summary.py"],
    "tripletlab/summarize/stats.py": ["tests/summarize/test_stats_pairs.py"],
    "tripletlab/training/checkpoints.py": [
        "tests/training/test_loop.py",
        "tests/training/test_checkpoints_rows.py",
    ],
}

STATUS = {  # mutmut's exit-code classes, as `mutmut results --all true` prints them
    "killed": "killed",
    "survived": "survived",
    "timeout": "timeout",
    "no tests": "no tests",
    "suspicious": "suspicious",
    "skipped": "skipped",
    "segfault": "killed",
    "caught by type check": "killed",
    "check was interrupted by user": "not checked",
    "not checked": "not checked",
}


def tests_for(module: str) -> list[str]:
    """The mirrored test file (if any) plus EXTRA_TESTS[module], those that exist."""
    rel = Path(module).relative_to("tripletlab")
    stem = rel.parent.name if rel.name == "__init__.py" else rel.stem
    parent = rel.parent.parent if rel.name == "__init__.py" else rel.parent
    mirrored = [Path("tests") / parent / f"test_{stem}.py", Path("tests") / f"test_{stem}.py"]
    found = [str(p) for p in mirrored if (ROOT / p).is_file()][:1]
    found += [t for t in EXTRA_TESTS.get(module, []) if (ROOT / t).is_file() and t not in found]
    return found


def copy_tree(dest: Path, ref: str, tests: list[str]) -> None:
    """Tracked and untracked-but-not-ignored files of the checkout (outputs/ left out), or
    the commit ``ref`` with the test files taken from the checkout."""
    if dest.exists():
        shutil.rmtree(dest)
    if ref:
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        for name in tests:
            shutil.copy2(ROOT / name, dest / name)
        return
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in names:
        name = raw.decode()
        if not name or name.startswith(("outputs/", "mutants/")) or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def write_settings(dest: Path, module: str, tests: list[str], pytest_args: list[str]) -> None:
    """The copy's pyproject.toml: [tool.mutmut] from the checkout's, limited to the module
    (and ``pytest_args`` added to pytest's)."""
    text = (dest / "pyproject.toml").read_text()
    settings = dict(tomllib.loads(text)["tool"]["mutmut"])
    settings["only_mutate"] = [module]
    settings["pytest_add_cli_args"] = [*settings.get("pytest_add_cli_args", []), *pytest_args]
    settings["pytest_add_cli_args_test_selection"] = tests
    text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
    body = "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items())
    (dest / "pyproject.toml").write_text(text.rstrip() + "\n\n[tool.mutmut]\n" + body)


def mutmut(dest: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    """``mutmut ARGS`` in the copy; its output captured, or written to ``log``."""
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONDONTWRITEBYTECODE": "1"}
    if log is None:
        return subprocess.run([str(exe), *args], cwd=dest, env=env, text=True, capture_output=True)
    with log.open("w") as out:
        return subprocess.run([str(exe), *args], cwd=dest, env=env, stdout=out, stderr=out)


def mutant_names(dest: Path, module: str) -> list[str]:
    """Every mutant of the module, from the meta file mutmut writes when it generates them."""
    code = (
        "from mutmut.__main__ import copy_src_dir, copy_also_copy_files, create_mutants\n"
        "from mutmut.__main__ import set_mutant_under_test\n"
        "set_mutant_under_test('mutant_generation'); copy_src_dir(); copy_also_copy_files()\n"
        "create_mutants(1)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=dest, check=True, capture_output=True)
    meta = json.loads((dest / "mutants" / f"{module}.meta").read_text())
    return sorted(meta["exit_code_by_key"])


def results(dest: Path) -> dict[str, str]:
    out = mutmut(dest, "results", "--all", "true").stdout
    found = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            found[name] = STATUS.get(status, status)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="a file under tripletlab/, e.g. tripletlab/metrics.py")
    parser.add_argument("--tests", default="", help="space-separated test files (replace the map)")
    parser.add_argument("--sample", type=int, default=0, help="test N seeded mutants, 0: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ref", default="", help="mutate this commit (tests from the checkout)")
    parser.add_argument(
        "--pytest-args",
        default="",
        help='more pytest arguments, e.g. "--deselect tests/x.py::test_y" for a test that '
        "runs a subprocess from the copy's folder (it imports the mutated copy without "
        "mutmut's harness)",
    )
    args = parser.parse_args(argv)
    module = Path(args.module).as_posix()
    if not (ROOT / module).is_file() or not module.startswith("tripletlab/"):
        parser.error(f"{module}: not a file under tripletlab/")
    tests = args.tests.split() or tests_for(module)
    if not tests:
        parser.error(f"no tests found for {module}; name them with TESTS=...")
    dest = WORK / module.replace("/", "_").removesuffix(".py")
    print(f"mutate {module} with {' '.join(tests)} in {dest}", flush=True)
    start = time.monotonic()
    copy_tree(dest, args.ref, tests)
    write_settings(dest, module, tests, shlex.split(args.pytest_args))
    names: list[str] = []
    if args.sample:
        every = mutant_names(dest, module)
        names = sorted(random.Random(args.seed).sample(every, min(args.sample, len(every))))
        print(f"sample: {len(names)} of {len(every)} mutants (seed {args.seed})", flush=True)
    log = dest / "mutmut-run.log"
    run = mutmut(dest, "run", "--max-children", "1", *names, log=log)
    found = results(dest)
    if run.returncode or not found:
        print(log.read_text()[-3000:])
    if names:
        found = {k: v for k, v in found.items() if k in set(names)}
    counts = Counter(found.values())
    minutes = (time.monotonic() - start) / 60
    print(f"\n{module}: {len(found)} mutants in {minutes:.1f} min")
    for status in ("killed", "survived", "timeout", "no tests", "suspicious", "not checked"):
        print(f"  {status:12} {counts.get(status, 0)}")
    for name, status in sorted(found.items()):
        if status != "killed":
            print(f"  {status}: {name}")
    print(f"diffs: cd {dest} && {Path(sys.executable).with_name('mutmut')} show NAME")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
