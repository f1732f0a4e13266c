"""Where tripletlab's own files are: the Hydra config folder ``conf/``.

In a clone (or an editable install) ``conf/`` sits at the top of the repository, next to
``pyproject.toml``; in an installed wheel it is the package folder ``tripletlab/conf``
(pyproject.toml maps ``tripletlab.conf`` to ``conf/``). Everything that composes configs asks
:func:`config_dir`.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_NAME = "config.yaml"


def config_dir() -> Path:
    """The folder that holds ``config.yaml`` and the config groups (an absolute path)."""
    package = Path(__file__).resolve().parent
    # The clone's first: a user edits conf/ there. pyproject.toml tells a clone from
    # site-packages, where a stray top-level conf/ may belong to another project.
    clone = package.parent / "conf"
    if (clone / CONFIG_NAME).is_file() and (package.parent / "pyproject.toml").is_file():
        return clone
    installed = package / "conf"
    if (installed / CONFIG_NAME).is_file():
        return installed
    from tripletlab.errors import ConfigError

    raise ConfigError(
        f"tripletlab's config folder is missing (looked for {CONFIG_NAME} in {clone} and "
        f"{installed}): reinstall tripletlab"
    )
