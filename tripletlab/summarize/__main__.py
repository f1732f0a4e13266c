"""``python -m tripletlab.summarize PATH...``: ``tripletlab-summarize`` under its module name
(:mod:`tripletlab.summarize.command`; nothing from :mod:`tripletlab.cli`)."""

import sys

from tripletlab.summarize.command import main

sys.exit(main())
