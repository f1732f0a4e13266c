"""The one entry point in a clone: ``python run.py [overrides]``, or ``python run.py -m ...``
(a sweep). The same command as ``tripletlab-train`` (:mod:`tripletlab.cli.train`)."""

import sys

try:
    from tripletlab.cli.train import main
except ModuleNotFoundError as err:  # a python without tripletlab's dependencies (no set-up)
    if (err.name or "tripletlab").split(".")[0] == "tripletlab":
        raise  # a bug in the package itself
    sys.exit(
        f"error: {sys.executable} cannot import {err.name}: run `make setup` first, then "
        ".venv/bin/python run.py ... (or `make run`)"
    )

if __name__ == "__main__":
    sys.exit(main())
