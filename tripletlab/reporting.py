"""A command's run as the user sees it: its mistakes as one ``error: ...`` line, its output
redacted. Above :mod:`tripletlab.errors` and :mod:`tripletlab.credentials`, which both the
console commands (:mod:`tripletlab.cli.common`) and ``python -m tripletlab.summarize`` use."""

import sys
from collections.abc import Callable, Sequence

from tripletlab.credentials import redacted_output
from tripletlab.errors import TripletLabError


def report_errors(
    main: Callable[[Sequence[str] | None], int],
    argv: Sequence[str] | None = None,
    setup: Callable[[], None] = lambda: None,
) -> int:
    """Run a command's ``main`` with its output redacted: a TripletLabError becomes one
    ``error: ...`` line and its ``exit_code`` (1 by default); Ctrl-C exits 130. Anything
    else is a bug and keeps its traceback. ``setup`` runs inside the redaction (a logging
    handler made there writes through it)."""
    with redacted_output():
        setup()
        try:
            return main(argv)
        except TripletLabError as err:
            print(f"error: {err}", file=sys.stderr)
            return getattr(err, "exit_code", 1)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
