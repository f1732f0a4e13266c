"""The one entry point in a clone: ``python run.py [overrides]``, or ``python run.py -m ...``
(a sweep). The same command as ``tripletlab-train`` (:mod:`tripletlab.cli.train`)."""

import sys

from tripletlab.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
