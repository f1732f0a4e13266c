"""``python -m tripletlab.bench <command> [options]``.

Each command is a module of this package with ``main(argv) -> int``. Modules are imported only
when their command runs, so one benchmark's dependencies never slow down or break another.
To add a command, write ``tripletlab/bench/<name>.py`` and add it to COMMANDS.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "losses": ("tripletlab.bench.losses", "time and peak memory of the triplet losses"),
    "peer": ("tripletlab.bench.peer", "batch-hard / easy-positive beside their peers, in rounds"),
    "train": ("tripletlab.bench.train", "training throughput"),
    "distribute": ("tripletlab.bench.distribute", "one device beside N mirrored replicas"),
    "data": ("tripletlab.bench.data", "streamed input pipeline: images/s and peak memory"),
    "eval": ("tripletlab.bench.eval", "a run's evaluation seconds: every epoch full vs sampled"),
    "index": ("tripletlab.bench.index", "nearest-neighbour indexes beside exact search"),
}


def _usage() -> str:
    lines = ["usage: python -m tripletlab.bench <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n`python -m tripletlab.bench <command> --help` lists a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # a real missing dependency: keep its traceback
            raise
        print(f"command {name!r} is not available yet ({module_name} is missing)", file=sys.stderr)
        return 2
    from tripletlab.errors import TripletLabError

    try:
        return int(module.main(rest) or 0)
    except TripletLabError as err:  # e.g. a broken plugin: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
