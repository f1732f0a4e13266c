"""Fashion-MNIST and MNIST: IDX files, found where they usually live or downloaded.

Search order: ``dataset.root`` if set (then only there); ``$TRIPLETLAB_DATA/<folder>``;
SYSTEM_DATASETS/<folder> (Debian's ``dataset-fashion-mnist``); ``~/.keras/datasets/<folder>``;
then a download from the official mirror into ``$TRIPLETLAB_DATA/<folder>`` (or
``~/.keras/datasets/<folder>``, :mod:`tripletlab.data.download`), checked against the
published sha256. Offline with none
of these: one DataError naming every place searched and how to fix it.

:func:`read_idx` and :func:`write_idx` read and write the format itself; a corrupt,
truncated or oversized file is a DataError naming it.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.data.base import DatasetSource, option, root_path
from tripletlab.data.download import (
    check_download_url,
    download_file,
    opener,
    prepare_folder,
)
from tripletlab.errors import DataError
from tripletlab.io_utils import atomic_path
from tripletlab.registry import DATASETS

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]

# Debian's dataset-* packages install here; a module constant so tests can point it elsewhere.
SYSTEM_DATASETS = Path("/usr/share/datasets")
DATA_ENV = "TRIPLETLAB_DATA"

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension
# IDX type codes; multi-byte values are big-endian in the file.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Largest IDX file (header and payload, decompressed) that a header may declare: 4 GiB, 85x
# Fashion-MNIST's 47 MB training images. A larger declared size is a corrupt file or a bomb.
MAX_IDX_BYTES = 1 << 32
IDX_CHUNK_BYTES = 1 << 20  # a .gz stream is decompressed this many bytes at a time
# Stems of the four IDX files, each found as-is or with a .gz suffix.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class _IdxSpec:
    folder: str  # sub-folder name under each search location
    url: str  # official mirror
    classes: list[str]
    apt_package: str | None  # Debian package that installs the files, if any


IDX_DATASETS = {
    "fashion_mnist": _IdxSpec(
        "fashion-mnist",
        # The dataset's own repository over HTTPS (its S3 website mirror is plain HTTP).
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        FASHION_MNIST_CLASSES,
        "dataset-fashion-mnist",
    ),
    "mnist": _IdxSpec(
        "mnist", "https://storage.googleapis.com/cvdf-datasets/mnist/", DIGIT_CLASSES, None
    ),
}
# The published sha256 of each official file (the .gz as distributed); a download from the
# official mirror is checked against it before use. A dataset.url mirror of the user's
# choice has no published checksum: its files get the IDX format checks only.
PUBLISHED_SHA256 = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    "mnist": {
        "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
}


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed if the name ends in .gz) into a native-endian array.

    ``expected_magic`` (e.g. IMAGES_MAGIC) makes any other magic number an error. A .gz file
    is decompressed as a stream, never further than the size its header declares (at most
    MAX_IDX_BYTES), so a small file that inflates to gigabytes is refused, not decompressed.
    """
    path = Path(path)
    return _read_idx_file(path, str(path), expected_magic)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as an IDX file, gzip-compressed if the name ends in .gz."""
    arr = np.asarray(array)
    code = next(
        (
            c
            for c, dt in _IDX_DTYPES.items()
            if (dt.kind, dt.itemsize) == (arr.dtype.kind, arr.dtype.itemsize)
        ),
        None,
    )
    if code is None or not 1 <= arr.ndim <= 255:
        raise ValueError(f"IDX cannot store a {arr.ndim}-d {arr.dtype} array")
    header = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    payload = header + np.ascontiguousarray(arr, dtype=_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime=0: the same array gives the same bytes
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def _read_idx_file(path: Path, where: str, expected_magic: int | None) -> np.ndarray:
    """read_idx of ``path``, its errors naming ``where`` (the file, or the URL it came from)."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{where} does not exist") from None
    except OSError as exc:
        raise DataError(f"cannot read {where}: {exc.strerror or exc}") from None
    with raw:
        size = os.fstat(raw.fileno()).st_size
        if not size:
            raise DataError(f"{where} is empty (0 bytes): delete it and download or copy it again")
        if not path.name.lower().endswith(".gz"):
            return _read_idx_stream(raw, where, expected_magic, size)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _read_idx_stream(stream, where, expected_magic, None)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DataError(
                f"{where} is not a valid gzip file ({exc}): it is corrupt or incomplete; "
                "delete it and download or copy it again"
            ) from None
        except OSError as exc:
            raise DataError(f"cannot read {where}: {exc.strerror or exc}") from None


def _read_up_to(stream: Any, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of the stream)."""
    parts, left = [], size
    while left:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _describe_magic(magic: int) -> str:
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    dtype = _IDX_DTYPES.get(code)
    if magic >> 16 or dtype is None:
        return f"0x{magic:08x}"
    return f"0x{magic:08x} ({dtype.name}, {ndim} dimension{'s' if ndim != 1 else ''})"


def _read_idx_stream(
    stream: Any, where: str, expected_magic: int | None, file_size: int | None
) -> np.ndarray:
    """Header first, then exactly the payload it declares, into one preallocated array.

    ``file_size``: the size of an uncompressed file (None for a stream), for the messages.
    """
    data = _read_up_to(stream, 4)
    if len(data) < 4:
        raise DataError(
            f"{where} is truncated: an IDX header needs at least 4 bytes, found {len(data)}"
        )
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    valid = magic >> 16 == 0 and code in _IDX_DTYPES and ndim > 0
    if (expected_magic is not None and magic != expected_magic) or not valid:
        expected = (
            f"expected {_describe_magic(expected_magic)}"
            if expected_magic is not None
            else "expected 0x0000 then a type code and the number of dimensions"
        )
        hint = ""
        if data[:2] == b"\x1f\x8b":
            hint = "; the file looks gzip-compressed: give it a .gz suffix"
        elif expected_magic == IMAGES_MAGIC and magic == LABELS_MAGIC:
            hint = "; this is a labels file: are the images and labels files swapped?"
        elif expected_magic == LABELS_MAGIC and magic == IMAGES_MAGIC:
            hint = "; this is an images file: are the images and labels files swapped?"
        raise DataError(
            f"{where} has the wrong magic number for an IDX file: {expected}, "
            f"found {_describe_magic(magic)}{hint}"
        )
    header = 4 + 4 * ndim
    data += _read_up_to(stream, header - 4)
    if len(data) < header:
        raise DataError(
            f"{where} is truncated: its {ndim}-dimension IDX header needs {header} bytes, "
            f"found {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    count = math.prod(shape)
    expected_size = header + count * dtype.itemsize
    described = f"shape {shape}, {dtype.name}"
    if expected_size > MAX_IDX_BYTES:
        raise DataError(
            f"{where} declares {expected_size:,} bytes in its header ({described}), more than "
            f"the limit of {MAX_IDX_BYTES:,}: it is corrupt or not an IDX file; delete it and "
            "download or copy it again"
        )
    payload = np.empty(expected_size - header, np.uint8)
    view, got = memoryview(payload), 0
    while got < len(payload):
        n = stream.readinto(view[got : got + IDX_CHUNK_BYTES])
        if not n:
            break
        got += n
    found = None
    if got < len(payload):
        found, problem = str(header + got), "is truncated"
    elif stream.read(1):  # one byte past the declared end, never the whole rest
        found = str(file_size) if file_size is not None else "more"
        problem = "has extra bytes at the end"
    if found is not None:
        raise DataError(
            f"{where} {problem}: expected {expected_size} bytes from its header ({described}), "
            f"found {found}; delete it and download or copy it again"
        )
    # Native byte order: a view for uint8, one conversion for wider types.
    return payload.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _idx_spec(name: str) -> _IdxSpec:
    try:
        return IDX_DATASETS[name]
    except KeyError:
        raise DataError(
            f"{name!r} is not an IDX dataset; choose one of: {', '.join(IDX_DATASETS)}"
        ) from None


def search_locations(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``name``'s IDX files, in order; a given ``root`` is the only one."""
    spec = _idx_spec(name)
    given = root_path(root)
    if given is not None:
        return [given]
    locations = []
    env = os.environ.get(DATA_ENV)
    if env:
        locations.append(Path(env).expanduser() / spec.folder)
    locations.append(SYSTEM_DATASETS / spec.folder)
    locations.append(Path.home() / ".keras" / "datasets" / spec.folder)
    return list(dict.fromkeys(locations))  # TRIPLETLAB_DATA may be ~/.keras/datasets


def _find_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The IDX files in ``folder`` (uncompressed preferred) and the stems that are missing."""
    found, missing = {}, []
    for key, stem in IDX_FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(stem)
    return found, missing


def find_idx_folder(name: str, root: str | os.PathLike | None = None) -> Path | None:
    """The first search location holding all four IDX files of ``name``, or None."""
    for location in search_locations(name, root):
        if location.is_dir() and not _find_files(location)[1]:
            return location
    return None


def _location_status(location: Path) -> str:
    if not location.exists():
        return "does not exist"
    if not location.is_dir():
        return "is not a folder"
    found, missing = _find_files(location)
    if not found:
        return "has none of the files"
    return "lacks " + ", ".join(f"{stem}[.gz]" for stem in missing)


def _download_dir(spec: _IdxSpec) -> Path:
    env = os.environ.get(DATA_ENV)
    base = Path(env).expanduser() if env else Path.home() / ".keras" / "datasets"
    return base / spec.folder


def _missing_message(
    name: str, locations: Sequence[Path], base_url: str, download_error: str | None
) -> str:
    spec = _idx_spec(name)
    files = ", ".join(f"{stem}.gz" for stem in IDX_FILES.values())
    lines = [f"{name}: the IDX files were not found. Searched, in order:"]
    lines += [f"  - {loc}: {_location_status(loc)}" for loc in locations]
    if not os.environ.get(DATA_ENV):
        lines.append(f"  ({DATA_ENV} is not set)")
    if download_error is None:
        lines.append("Downloading is off (dataset.download=false).")
    else:
        lines.append(f"Downloading into {_download_dir(spec)} failed: {download_error}")
    lines.append("To fix it, do one of:")
    if spec.apt_package:
        lines.append(
            f"  - install the Debian package: sudo apt-get install {spec.apt_package} "
            f"(files in {SYSTEM_DATASETS / spec.folder})"
        )
    lines.append(
        f"  - put the 4 files ({files}) in <dir>/{spec.folder} and set {DATA_ENV}=<dir>, "
        "or put them in any folder and set dataset.root=<that folder>"
    )
    if download_error is None:
        lines.append(f"  - allow the download with dataset.download=true (needs {base_url})")
    else:
        lines.append(
            f"  - check the network or dataset.url, or fetch the files by hand from {base_url}"
        )
    return "\n".join(lines)


def _locate(
    name: str, root: Any, download: bool, url: str | None, allow_insecure_url: bool = False
) -> tuple[Path, str | None]:
    """Find (or download) ``name``'s IDX folder; return it and the URL if it was downloaded."""
    spec = _idx_spec(name)
    given = root_path(root)
    if given is not None:
        # A given root is the user's explicit choice: never fall back to other places.
        if not given.exists():
            raise DataError(
                f"dataset.root={given} does not exist; set it to the folder holding the "
                f"{name} IDX files, or unset it to search the usual places"
            )
        if not given.is_dir():
            raise DataError(f"dataset.root={given} is not a folder")
        missing = _find_files(given)[1]
        if missing:
            raise DataError(
                f"dataset.root={given} lacks "
                + ", ".join(f"{stem}[.gz]" for stem in missing)
                + f": {name} needs all 4 IDX files there. With dataset.root set only that "
                "folder is used; add the files or unset dataset.root to search the usual "
                "places (and download)"
            )
        return given, None
    locations = search_locations(name)
    found = find_idx_folder(name)
    if found is not None:
        return found, None
    base_url = url or spec.url
    if not download:
        raise DataError(_missing_message(name, locations, base_url, None))
    check_download_url(base_url, allow_insecure_url)
    target = _download_dir(spec)
    created = [p for p in (target, *target.parents) if not p.exists()]  # deepest first
    try:
        _download(name, target, base_url, allow_insecure_url)
    except DataError as exc:
        # A failed download leaves no trace: remove the folders it created if still empty.
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise DataError(_missing_message(name, locations, base_url, str(exc))) from None
    return target, base_url


def _download(name: str, target: Path, base_url: str, allow_insecure_url: bool = False) -> None:
    """Download the missing IDX files of ``name`` into ``target``, checking each one."""
    prepare_folder(target)
    fetcher = opener(allow_insecure_url)
    missing = _find_files(target)[1]  # files kept from an interrupted earlier download
    official = base_url.rstrip("/") == _idx_spec(name).url.rstrip("/")
    if not official:
        log.warning("%s is not the official mirror: no published sha256 to check", base_url)
    for stem in missing:
        file_url = base_url.rstrip("/") + "/" + stem + ".gz"
        magic = IMAGES_MAGIC if "images" in stem else LABELS_MAGIC
        download_file(
            fetcher,
            file_url,
            target / f"{stem}.gz",
            PUBLISHED_SHA256.get(name, {}).get(stem) if official else None,
            lambda path, url=file_url, magic=magic: _read_idx_file(path, url, magic),
        )


def _load_idx(name: str, folder: Path) -> tuple[np.ndarray, ...]:
    files = _find_files(folder)[0]
    num_classes = len(_idx_spec(name).classes)
    arrays: list[np.ndarray] = []
    for split in ("train", "test"):
        images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
        x = read_idx(images_path, IMAGES_MAGIC)
        y = read_idx(labels_path, LABELS_MAGIC)
        if len(x) != len(y):
            raise DataError(
                f"{images_path} holds {len(x)} images but {labels_path} holds {len(y)} labels; "
                "both must come from the same release: replace them"
            )
        if len(x) == 0:
            raise DataError(f"{images_path} holds no images")
        if y.max() >= num_classes:
            raise DataError(
                f"{labels_path} has label {int(y.max())}, but {name} has {num_classes} classes "
                f"(labels 0..{num_classes - 1})"
            )
        arrays += [x[..., None], y.astype(np.int64)]
    return tuple(arrays)


def _idx_source(name: str) -> DatasetSource:
    def load(cfg: Any) -> tuple:
        download = bool(option(cfg, "download"))
        allow_insecure = bool(option(cfg, "allow_insecure_url"))
        url = option(cfg, "url")
        folder, url_used = _locate(name, option(cfg, "root"), download, url, allow_insecure)
        classes = list(IDX_DATASETS[name].classes)
        return (*_load_idx(name, folder), classes, url_used or str(folder.absolute()))

    def ensure(
        root: Any, download: bool, url: str | None, allow_insecure_url: bool = False
    ) -> tuple[Path, str]:
        folder, url_used = _locate(name, root, download, url, allow_insecure_url)
        _load_idx(name, folder)  # read everything now, so corrupt files fail here and not mid-run
        return folder, f"downloaded from {url_used} to" if url_used else "found in"

    def fingerprint(cfg: Any) -> dict | None:
        given = root_path(option(cfg, "root"))
        folder = given if given is not None and given.is_dir() else find_idx_folder(name)
        if folder is None or _find_files(folder)[1]:
            return None  # not there yet (downloaded by load) or incomplete (load says so)
        from tripletlab.data.fingerprints import of_idx_file

        files = _find_files(folder)[0]
        return {"files": {files[k].name: of_idx_file(files[k]) for k in IDX_FILES}}

    return DatasetSource(load, ensure, fingerprint)


for _name in IDX_DATASETS:
    DATASETS.register(_name)(_idx_source(_name))
