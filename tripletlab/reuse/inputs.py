"""The image files a reuse command reads: inputs given as files and folders, and a gallery
folder. Shared by :mod:`.embed` and :mod:`.index`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tripletlab.errors import DataError
from tripletlab.io_utils import is_hidden

log = logging.getLogger("tripletlab")


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files given as-is, and the images under folders (recursively, sorted), in order."""
    from tripletlab.data import IMAGE_EXTENSIONS

    if not inputs:
        raise DataError("no input: give image files or folders of images")
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise DataError(f"input {path} does not exist")
        if path.is_file():
            found.append(path)
            continue
        files = [p for p in sorted(path.rglob("*")) if p.is_file()]
        files = [p for p in files if not is_hidden(p, root=path)]
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if len(images) < len(files):
            log.warning(
                "%s: skipping %d file(s) without an image extension (%s)",
                path,
                len(files) - len(images),
                ", ".join(IMAGE_EXTENSIONS),
            )
        if not images:
            raise DataError(
                f"folder {path} holds no images (searched recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        found += images
    return found


def gallery_files(folder: str | Path) -> tuple[Path, list[Path]]:
    """The gallery folder and its images (recursively); an error if there are none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"--gallery {root} is not a folder")
    try:
        return root, find_images([root])
    except DataError as err:
        raise DataError(f"--gallery: {err}") from None
