"""``python -m tripletlab.summarize PATH...``: ``tripletlab-summarize`` under its module name."""

import sys

from tripletlab.cli.summarize import main

sys.exit(main())
