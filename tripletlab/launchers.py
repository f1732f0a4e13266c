"""Values that reach a shell: the one check and the one quoting for launchers.

Hydra's Slurm launcher (submitit) writes an sbatch script: every launcher value becomes a
``#SBATCH --key=value`` line (quoted with :func:`shlex.quote` by submitit), the ``srun``
arguments are quoted, and the ``setup`` / ``teardown`` entries are shell lines by design.
Quoting alone cannot hold a newline: a value with one ends its ``#SBATCH`` comment line, and
what follows runs as a command. So before anything is written, every string of the launcher's
config, at any depth (keys too), is checked here by :func:`check_value`: no control character
(newlines, NUL, escape, DEL, the C1 range, Unicode line separators). A key of
``additional_parameters`` becomes an sbatch flag name unquoted, so it must be a plain name.

:class:`CheckLauncher`, a callback of every sweep (``conf/config.yaml``), runs the check
before any launcher is built (a fresh sweep or ``--resume``, whichever launcher; a resume
never replays an override that removes it), and ends the sweep with one ``error:`` line
naming the key. :func:`shell_line` checks and quotes the command lines tripletlab prints.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tripletlab.errors import ConfigError

# C0 controls (newline, CR, NUL, ESC...), DEL, C1 controls, Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# An sbatch flag name (``mail-user``, ``mail_type``): written as ``#SBATCH --NAME=...``.
_FLAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# Launcher keys whose entries are shell lines by design (run before / after srun): checked
# for control characters like every value, but not quoted, and never replayed by --resume.
COMMAND_KEYS = frozenset({"setup", "teardown"})
# Keys whose mapping keys become sbatch flag names.
FLAG_MAPPING_KEYS = frozenset({"additional_parameters"})


class UnsafeShellValue(ConfigError):
    """A value that would be written into a shell script holds a control character."""


def check_value(key: str, value: Any) -> None:
    """UnsafeShellValue naming ``key`` if ``value`` (a string) holds a control character."""
    if not isinstance(value, str):
        return
    found = _CONTROL.search(value)
    if found:
        raise UnsafeShellValue(
            f"{printable(key)} holds a control character ({found.group()!r} at position {found.start()}): "
            "a launcher value is written into a shell script, where a newline would start a "
            "command; remove it"
        )


def printable(text: str) -> str:
    """``text`` with its control characters written as escapes (``\\n``), for a message."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def shell_quote(key: str, value: Any) -> str:
    """``value`` as one shell word: checked (:func:`check_value`), then :func:`shlex.quote`."""
    text = str(value)
    check_value(key, text)
    return shlex.quote(text)


def shell_line(args: Sequence[Any], what: str = "command") -> str:
    """A command line whose every argument is checked and quoted (:func:`shell_quote`)."""
    words = []
    for i, arg in enumerate(map(str, args)):
        name = arg.split("=", 1)[0] if "=" in arg else f"argument {i}"  # an override: its key
        words.append(shell_quote(f"{what} {name}", arg))
    return " ".join(words)


def launcher_items(node: Any, prefix: str = "hydra.launcher") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a launcher config (mappings and lists, any depth)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            check_value(f"{prefix} (a key)", str(key))
            yield from launcher_items(value, f"{prefix}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from launcher_items(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


def check_launcher(params: Any, prefix: str = "hydra.launcher") -> None:
    """UnsafeShellValue (naming the key) if any string of ``params`` (a launcher's config: a
    mapping, DictConfig resolved or not) would be unsafe in its sbatch script."""
    params = _plain(params)
    for key, value in launcher_items(params, prefix):
        check_value(key, value)
    for name in FLAG_MAPPING_KEYS:
        for flag in (params.get(name) or {}) if isinstance(params, Mapping) else {}:
            if not _FLAG_NAME.fullmatch(str(flag)):
                raise UnsafeShellValue(
                    f"{prefix}.{name} has the key {str(flag)!r}, which is written unquoted as "
                    "an sbatch flag: use a flag name (letters, digits, - and _)"
                )


def _plain(params: Any) -> Any:
    """A DictConfig as plain containers (resolved where it resolves)."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(params):
        return params
    try:
        return OmegaConf.to_container(params, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation only the job can resolve: as written
        return OmegaConf.to_container(params, resolve=False)


def refuse_unsafe(params: Any) -> None:
    """:func:`check_launcher`, as one ``error:`` line and exit 1 (inside Hydra, where an
    exception from a callback is only a warning and one from a launcher a traceback)."""
    try:
        check_launcher(params)
    except UnsafeShellValue as err:
        print(f"error: {err}; nothing was submitted", file=sys.stderr, flush=True)
        sys.exit(1)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - Hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]


class CheckLauncher(Callback):
    """At the start of every sweep (``hydra.callbacks.launcher_check``): the launcher's
    config, whichever launcher, passes :func:`check_launcher` or nothing is submitted."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        refuse_unsafe(config.hydra.launcher)
