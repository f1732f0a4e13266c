"""Datasets: Fashion-MNIST and MNIST (IDX files), scikit-learn's digits, a folder of images
with one sub-folder per class, and the metric-learning benchmarks in their published layouts
(cub200, cars196, sop, inshop: :mod:`tripletlab.layouts`).

Small datasets are uint8 numpy arrays [N, H, W, C]. Image files are streamed when holding
them in memory would take more than STREAM_ABOVE_BYTES at its peak (``dataset.stream=auto``,
:func:`in_memory_peak_bytes`) or when asked
(``dataset.stream=true``): the split then holds an :class:`~tripletlab.image_files.ImageFiles`
index of paths in place of the array, checked file by file before training starts.

``dataset.split=classes`` (any dataset) pools the splits and trains on the first half of the
classes (or ``dataset.train_classes``), testing on the others: the unseen-class protocol.

Only numpy and PIL are imported here (TensorFlow takes seconds to import), so loading and
checking data stays fast. Every problem with the input raises one
:class:`~tripletlab.errors.DataError` naming the file or folder, the problem and the fix;
nothing is silently skipped.

Each dataset is a :class:`DatasetSource` registered by name in
:data:`tripletlab.registry.DATASETS`; a new one is a source plus ``conf/dataset/<name>.yaml``
(and a schema in :mod:`tripletlab.config` for keys of its own).

``tripletlab-fetch fashion_mnist`` (or ``python -m tripletlab.data fetch fashion_mnist``) makes
sure the IDX files are present.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import math
import os
import re
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tripletlab import image_files
from tripletlab.config import DATASET_SPLITS, STREAM_CHOICES
from tripletlab.errors import ConfigError, DataError
from tripletlab.image_files import ImageFiles, common_format, inspect_images
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
DOWNLOAD_TIMEOUT = 60.0  # seconds a connection may stay silent before the download fails
# A download's temporary file untouched this long was left by a killed process.
STALE_PART_SECONDS = 2 * DOWNLOAD_TIMEOUT
INSECURE_SCHEMES = ("http", "file")  # downloadable only with dataset.allow_insecure_url=true
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"

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
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# dataset.stream=auto streams image files whose in-memory path would peak above this.
STREAM_ABOVE_BYTES = 1 << 30
# The in-memory path's peak above a streamed run's, per decoded byte: the decoded array,
# once (decoded straight into it, shared with TensorFlow, evaluated by slices); 0.97
# measured by `python -m tripletlab.bench data --memory` (results/bench_data_memory.md),
# where it was 3.3 when the array was stacked from a list and copied by tf.constant.
IN_MEMORY_PEAK_FACTOR = 1.0


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


@dataclass(repr=False)
class Dataset:
    """Train and test images (uint8 [N, H, W, C], or ImageFiles streamed from disk) with
    int64 labels indexing class_names.

    With a gallery (In-Shop's query/gallery protocol) the test split is the queries, ranked
    against ``x_gallery`` only; without one, each test image is ranked against the others.
    """

    name: str
    x_train: np.ndarray | ImageFiles
    y_train: np.ndarray
    x_test: np.ndarray | ImageFiles
    y_test: np.ndarray
    class_names: list[str]
    source: str  # where it was read from: a folder, "scikit-learn" or a URL
    x_gallery: np.ndarray | ImageFiles | None = None
    y_gallery: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def streamed(self) -> bool:
        return isinstance(self.x_train, ImageFiles)

    def __repr__(self) -> str:
        # The default repr would print the arrays.
        gallery = "" if self.x_gallery is None else f", gallery={len(self.x_gallery)}"
        return (
            f"Dataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}"
            f"{gallery}, image_shape={self.image_shape}, classes={self.num_classes}, "
            f"streamed={self.streamed}, source={self.source!r})"
        )


@dataclass(frozen=True)
class DatasetSource:
    """One dataset's code, registered by name in :data:`tripletlab.registry.DATASETS`.

    ``load(cfg)`` -> (x_train, y_train, x_test, y_test, class_names, source): uint8 images
    [N, H, W, C] (or ImageFiles), int64 labels, and where they were read from; or a
    :class:`Dataset` (to give a gallery). :func:`load_dataset` then applies split,
    max_train / max_test, image_size and channels. ``ensure(root, download, url,
    allow_insecure_url)`` -> (folder, how it was found): makes sure the files are present
    (``tripletlab-fetch``).
    """

    load: Callable[[Any], tuple]
    ensure: Callable[[Any, bool, str | None, bool], tuple[Path, str]]


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "DATASET_NAMES":  # every dataset name, registered here or elsewhere
        return DATASETS.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- IDX files


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
    with _atomic_path(path) as tmp:
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


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it becomes ``path`` only if the block succeeds.

    The temporary name keeps the final suffix, so a .gz stays readable as .gz while it is checked.
    """
    # Not mkstemp: its files are private (0600), and the data folder may be shared. The name
    # says which process writes it, so that one killed can be told apart (_remove_stale_parts).
    owner = f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.name}@{owner}.part{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- finding IDX data


def _idx_spec(name: str) -> _IdxSpec:
    try:
        return IDX_DATASETS[name]
    except KeyError:
        raise DataError(
            f"{name!r} is not an IDX dataset; choose one of: {', '.join(IDX_DATASETS)}"
        ) from None


def _root_path(root: Any) -> Path | None:
    # Hydra users write `dataset.root=` for "unset", which arrives as "" or None.
    if root is None or str(root) == "":
        return None
    return Path(os.path.expandvars(str(root))).expanduser()


def search_locations(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``name``'s IDX files, in order; a given ``root`` is the only one."""
    spec = _idx_spec(name)
    root_path = _root_path(root)
    if root_path is not None:
        return [root_path]
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


def check_download_url(url: str, allow_insecure: bool) -> None:
    """A ConfigError unless ``url`` is https://, or http:// / file:// with the opt-in."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme in INSECURE_SCHEMES and allow_insecure):
        return
    if scheme in INSECURE_SCHEMES:
        raise ConfigError(
            f"dataset.url={url} is {scheme}://, without TLS: what it serves can be replaced on "
            "the way, and no published checksum guards a mirror. Use an https:// mirror, or "
            "opt in with dataset.allow_insecure_url=true (tripletlab-fetch --allow-insecure-url)"
        )
    raise ConfigError(
        f"dataset.url={url} cannot be downloaded: use an https:// URL (http:// and file:// "
        "need dataset.allow_insecure_url=true)"
    )


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to https://: an https mirror must not hand over to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() != "https":
            raise urllib.error.URLError(
                f"redirected to {newurl}, which is not https (allowed only with "
                "dataset.allow_insecure_url=true)"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _remove_stale_parts(folder: Path) -> None:
    """Delete the temporary files of downloads that were killed: written by a process of this
    host that is gone, or untouched for STALE_PART_SECONDS (a live download writes at least
    every DOWNLOAD_TIMEOUT seconds, or fails)."""
    now = time.time()
    for part in folder.glob(".*.part*"):
        match = re.fullmatch(r"\..+@([A-Za-z0-9_]+)-(\d+)-[0-9a-f]+\.part.*", part.name)
        try:
            stale = now - part.stat().st_mtime > STALE_PART_SECONDS
            if match and match.group(1) == _HOST and not stale:
                stale = not _process_exists(int(match.group(2)))
            if stale:
                part.unlink()
                log.info("removed %s, left by an interrupted download", part)
        except OSError:  # gone meanwhile, or not ours to remove: the download goes on
            continue


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _locate(
    name: str, root: Any, download: bool, url: str | None, allow_insecure_url: bool = False
) -> tuple[Path, str | None]:
    """Find (or download) ``name``'s IDX folder; return it and the URL if it was downloaded."""
    spec = _idx_spec(name)
    root_path = _root_path(root)
    if root_path is not None:
        # A given root is the user's explicit choice: never fall back to other places.
        if not root_path.exists():
            raise DataError(
                f"dataset.root={root_path} does not exist; set it to the folder holding the "
                f"{name} IDX files, or unset it to search the usual places"
            )
        if not root_path.is_dir():
            raise DataError(f"dataset.root={root_path} is not a folder")
        missing = _find_files(root_path)[1]
        if missing:
            raise DataError(
                f"dataset.root={root_path} lacks "
                + ", ".join(f"{stem}[.gz]" for stem in missing)
                + f": {name} needs all 4 IDX files there. With dataset.root set only that "
                "folder is used; add the files or unset dataset.root to search the usual "
                "places (and download)"
            )
        return root_path, None
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
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {target}: {exc.strerror or exc}") from None
    _remove_stale_parts(target)
    opener = (
        urllib.request.build_opener()
        if allow_insecure_url
        else urllib.request.build_opener(_HttpsOnlyRedirects)
    )
    missing = _find_files(target)[1]  # files kept from an interrupted earlier download
    official = base_url.rstrip("/") == _idx_spec(name).url.rstrip("/")
    if not official:
        log.warning("%s is not the official mirror: no published sha256 to check", base_url)
    for stem in missing:
        file_url = base_url.rstrip("/") + "/" + stem + ".gz"
        log.info("downloading %s", file_url)
        with _atomic_path(target / f"{stem}.gz") as tmp:
            try:
                with (
                    opener.open(file_url, timeout=DOWNLOAD_TIMEOUT) as response,
                    tmp.open("wb") as out,
                ):
                    shutil.copyfileobj(response, out, 1 << 20)
            # URLError, HTTPError and timeouts are OSErrors; ValueError: a malformed URL.
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # URLError's reason drops the URL noise, but HTTPError's would drop the status.
                plain_url_error = isinstance(exc, urllib.error.URLError) and not isinstance(
                    exc, urllib.error.HTTPError
                )
                reason = exc.reason if plain_url_error else exc
                raise DataError(f"{file_url}: {reason or type(exc).__name__}") from None
            # Check before the file takes its real name, so a bad download never looks like data
            # (the temporary file is deleted on any error).
            expected = PUBLISHED_SHA256.get(name, {}).get(stem) if official else None
            if expected is not None:
                digest = _sha256(tmp)
                if digest != expected:
                    raise DataError(
                        f"{file_url}: sha256 {digest} is not the published {expected}: the "
                        "file is damaged or was replaced; it was deleted (retry, or fetch "
                        "the files by hand)"
                    )
            magic = IMAGES_MAGIC if "images" in stem else LABELS_MAGIC
            _read_idx_file(tmp, file_url, magic)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        download = bool(_opt(cfg, "download"))
        allow_insecure = bool(_opt(cfg, "allow_insecure_url"))
        url = _opt(cfg, "url")
        folder, url_used = _locate(name, _opt(cfg, "root"), download, url, allow_insecure)
        classes = list(IDX_DATASETS[name].classes)
        return (*_load_idx(name, folder), classes, url_used or str(folder.absolute()))

    def ensure(
        root: Any, download: bool, url: str | None, allow_insecure_url: bool = False
    ) -> tuple[Path, str]:
        folder, url_used = _locate(name, root, download, url, allow_insecure_url)
        _load_idx(name, folder)  # read everything now, so corrupt files fail here and not mid-run
        return folder, f"downloaded from {url_used} to" if url_used else "found in"

    return DatasetSource(load, ensure)


for _name in IDX_DATASETS:
    DATASETS.register(_name)(_idx_source(_name))


def ensure_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
    url: str | None = None,
    allow_insecure_url: bool = False,
) -> Path:
    """Make sure ``name``'s files are present (downloading if allowed) and readable."""
    return _ensure(name, root, download, url, allow_insecure_url)[0]


def _ensure(
    name: str, root: Any, download: bool, url: str | None, allow_insecure_url: bool = False
) -> tuple[Path, str]:
    return DATASETS.get(name).ensure(root, download, url, allow_insecure_url)


# --------------------------------------------------------------------------- digits


def _import_sklearn_datasets() -> Any:
    # Imported on demand: scikit-learn is slow to import and only digits needs it.
    try:
        import sklearn.datasets
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    return sklearn.datasets


def _load_digits(test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    digits = _import_sklearn_datasets().load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # 0..16 -> 0..255
    labels = digits.target.astype(np.int64)
    train, test = _stratified_split(labels, test_fraction, seed)
    return images[train], labels[train], images[test], labels[test]


def _digits_load(cfg: Any) -> tuple:
    arrays = _load_digits(float(_opt(cfg, "test_fraction")), int(_opt(cfg, "split_seed")))
    return (*arrays, list(DIGIT_CLASSES), "scikit-learn")


def _digits_ensure(root: Any, download: bool, url: str | None, *_: Any) -> tuple[Path, str]:
    sklearn_datasets = _import_sklearn_datasets()
    return Path(sklearn_datasets.__file__).parent / "data", "bundled with scikit-learn in"


DATASETS.register("digits")(DatasetSource(_digits_load, _digits_ensure))


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train and test indices; every class (>= 2 items) keeps >= 1 item on each side."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(max(round(len(indices) * test_fraction), 1), len(indices) - 1)
        test.append(indices[:n_test])
        train.append(indices[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


# --------------------------------------------------------------------------- image folders


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")  # .DS_Store, .ipynb_checkpoints, ...


def _class_folders(folder: Path) -> list[Path]:
    entries = sorted(p for p in folder.iterdir() if not _is_hidden(p))
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if images:
        raise DataError(
            f"{folder} holds images directly ({images[0].name}"
            + (f" and {len(images) - 1} more" if len(images) > 1 else "")
            + f"): put each image in a sub-folder named after its class ({folder}/<class>/<image>)"
        )
    for p in entries:
        if not p.is_dir():
            log.warning("ignoring %s: not a class folder", p)
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        raise DataError(
            f"{folder} has no class sub-folders: image_folder needs one sub-folder per class "
            f"holding its images ({folder}/<class>/<image>.png)"
        )
    if len(classes) < 2:
        raise DataError(
            f"{folder} has only one class sub-folder ({classes[0].name}): a triplet needs a "
            "negative from another class, so add at least one more class"
        )
    return classes


def _class_images(class_dir: Path, min_images: int) -> list[Path]:
    images = []
    for p in sorted(class_dir.iterdir()):
        if _is_hidden(p):
            continue
        if p.is_dir():
            raise DataError(
                f"{p} is a folder inside class folder {class_dir}: nested folders are not "
                "supported; move its images up or remove it"
            )
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(
                f"{p} is not a supported image (extensions: {', '.join(IMAGE_EXTENSIONS)}); "
                "convert it or move it out of the dataset"
            )
        images.append(p)
    if not images:
        raise DataError(
            f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images "
            "or remove the folder"
        )
    if len(images) < min_images:
        raise DataError(
            f"class {class_dir.name!r} has only {len(images)} image ({class_dir}): a triplet needs "
            f"{min_images} images of a class; add images or remove the folder"
        )
    return images


def decode_image(path: Path, channels: int | None, size: int | None) -> np.ndarray:
    """Decode one image to uint8 [H, W, 1 or 3]; channels None keeps colour only if it has any.

    More than ``image_files.MAX_PIXELS`` pixels is refused before decoding (as streamed).
    """
    try:
        with Image.open(path) as im:
            if im.width * im.height > image_files.MAX_PIXELS:
                raise DataError(f"image {path} {image_files.too_many_pixels(im.width, im.height)}")
            im.load()
            if im.mode.startswith("I;16") or im.mode == "I":
                # PIL's convert("L") clips 16-bit samples at 255 instead of scaling them.
                im = Image.fromarray(
                    (np.asarray(im, np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
                )
            gray_mode = im.mode in ("1", "L", "LA", "F")
            mode = "L" if channels == 1 or (channels is None and gray_mode) else "RGB"
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit, twice MAX_PIXELS
        raise DataError(
            f"image {path} has more pixels than the limit of {image_files.MAX_PIXELS:,} "
            f"({exc}); shrink it or remove it"
        ) from None
    # PIL raises many types for corrupt files (OSError, SyntaxError, struct.error, ...).
    except Exception as exc:
        raise DataError(
            f"cannot read image {path}: {exc}; it is corrupt or not an image: fix or remove it"
        ) from None
    if arr.ndim == 2:
        return arr[..., None]
    if (
        channels is None
        and (arr[..., 0] == arr[..., 1]).all()
        and (arr[..., 1] == arr[..., 2]).all()
    ):
        return arr[..., :1]  # an RGB file with grey content counts as grayscale
    return arr


def aligned_empty(shape: Sequence[int], dtype: Any = np.uint8, align: int = 64) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts at a multiple of ``align`` bytes:
    TensorFlow can then use it without a copy (:func:`tripletlab.pipeline.as_uint8_tensor`)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(nbytes + align, np.uint8)
    start = (-buffer.ctypes.data) % align
    return buffer[start : start + nbytes].view(dtype).reshape(shape)


def _decode_all(paths: Sequence[Path], channels: int | None, size: int | None) -> np.ndarray:
    """Every image decoded straight into one uint8 array [N, H, W, C] (about its decoded
    size in memory, not a list of arrays and then their stack). ``channels`` None: 1 until
    an image has colour, then the array becomes RGB once."""
    out: np.ndarray | None = None
    for i, path in enumerate(paths):
        image = decode_image(path, channels, size)
        if out is None:
            out = aligned_empty((len(paths), *image.shape))
        elif image.shape[:2] != out.shape[1:3]:
            raise DataError(
                f"images differ in size: {paths[0]} is {out.shape[2]}x{out.shape[1]} but {path} "
                f"is {image.shape[1]}x{image.shape[0]}; set dataset.image_size=N to resize them "
                "all to N x N"
            )
        if image.shape[-1] > out.shape[-1]:  # the first colour image after grey ones
            rgb = aligned_empty((*out.shape[:3], 3))
            rgb[:i] = out[:i]  # broadcast over the channels
            out = rgb
        out[i] = image  # a grey image broadcasts into an RGB array
    if out is None:
        return np.zeros((0, size or 0, size or 0, channels or 1), np.uint8)
    return out


def _read_class_tree(class_dirs: list[Path], min_images: int) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = _class_images(class_dir, min_images)
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _require_root(root: Any) -> Path:
    root_path = _root_path(root)
    if root_path is None:
        raise DataError("image_folder needs dataset.root: the folder with one sub-folder per class")
    if not root_path.exists():
        raise DataError(f"dataset.root={root_path} does not exist")
    if not root_path.is_dir():
        raise DataError(f"dataset.root={root_path} is not a folder")
    return root_path


def stream_mode(cfg: Any) -> str:
    """``dataset.stream`` as auto, true or false (a YAML bool arrives as True/False)."""
    value = str(_opt(cfg, "stream") or "auto").lower()
    if value not in STREAM_CHOICES:
        raise ConfigError(
            f"dataset.stream={value!r} is not valid; choose one of: {', '.join(STREAM_CHOICES)}"
        )
    return value


def in_memory_peak_bytes(count: int, size: int | None, channels: int | None) -> int:
    """What holding ``count`` images decoded in memory adds to a run's peak, in bytes:
    IN_MEMORY_PEAK_FACTOR times their decoded size; with ``channels`` None, RGB and 4/3 of
    that (grey images followed by a colour one: the grey array and its RGB copy at once);
    0 when ``size`` is None (their size is unknown before decoding)."""
    decoded = int(count) * int(size or 0) ** 2 * int(channels or 3)
    upgrade = 4 / 3 if channels is None else 1.0
    return int(decoded * IN_MEMORY_PEAK_FACTOR * upgrade)


def images_from_files(
    splits: Sequence[Sequence[Path]],
    channels: int | None,
    size: int | None,
    stream: str = "auto",
    verify: bool = True,
) -> list[np.ndarray | ImageFiles]:
    """The images of each split's files: uint8 arrays, or ImageFiles when streamed.

    ``stream``: "true", "false", or "auto" (stream when ``size`` is set and the in-memory
    path would peak above STREAM_ABOVE_BYTES, :func:`in_memory_peak_bytes`). Streamed files
    are inspected first (``verify``): an unreadable one fails now, named, not mid-epoch. ``channels`` None:
    RGB if any image has colour, else grayscale; ``size`` None: the images' own size,
    which must then be the same for all. Both span every split.
    """
    paths = [p for split in splits for p in split]
    bounds = np.cumsum([0] + [len(split) for split in splits])
    if stream == "auto":
        peak = in_memory_peak_bytes(len(paths), size, channels)
        stream = "true" if peak > STREAM_ABOVE_BYTES else "false"
    if stream == "false":
        # Decoded together: channels=None and the size check span every split.
        x = _decode_all(paths, channels, size)
        return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if verify:
        shape = common_format(inspect_images(paths), paths, size, channels)
    elif size is None or channels is None:
        raise ConfigError(
            "dataset.verify=false reads no image header, so it needs dataset.image_size and "
            "dataset.channels set"
        )
    else:
        shape = (int(size), int(size), int(channels))
    files = ImageFiles(paths, *shape)
    return [files[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _load_image_folder(
    root: Path,
    channels: int | None,
    size: int | None,
    test_fraction: float,
    seed: int,
    stream: str = "false",
    verify: bool = True,
) -> tuple[Any, ...]:
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        present, absent = (train_dir, test_dir) if train_dir.is_dir() else (test_dir, train_dir)
        raise DataError(
            f"{root} has {present.name}/ but no {absent.name}/: use both train/ and test/ "
            "(each with class sub-folders), or neither (class sub-folders directly in "
            f"{root}); if {present.name!r} is a class, rename it"
        )
    if train_dir.is_dir():
        for p in root.iterdir():
            if p.name not in ("train", "test") and not _is_hidden(p):
                log.warning("ignoring %s: with train/ and test/ only those are read", p)
        train_classes, test_classes = _class_folders(train_dir), _class_folders(test_dir)
        train_names = [p.name for p in train_classes]
        test_names = [p.name for p in test_classes]
        if train_names != test_names:
            only_train = sorted(set(train_names) - set(test_names))
            only_test = sorted(set(test_names) - set(train_names))
            raise DataError(
                f"the class folders of {train_dir} and {test_dir} differ: only in train/: "
                f"{only_train or 'none'}; only in test/: {only_test or 'none'}; both need the "
                "same classes"
            )
        # Training needs 2 images of a class for a triplet; test only needs the class present.
        train_paths, y_train = _read_class_tree(train_classes, 2)
        test_paths, y_test = _read_class_tree(test_classes, 1)
        paths = train_paths + test_paths
        n_train = len(train_paths)
    else:
        classes = _class_folders(root)
        train_names = [p.name for p in classes]
        paths, labels = _read_class_tree(classes, 2)
        train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
        paths = [paths[i] for i in train_idx] + [paths[i] for i in test_idx]
        y_train, y_test = labels[train_idx], labels[test_idx]
        n_train = len(train_idx)
    x_train, x_test = images_from_files(
        [paths[:n_train], paths[n_train:]], channels, size, stream, verify
    )
    return x_train, y_train, x_test, y_test, train_names


def _image_folder_load(cfg: Any) -> tuple:
    root_path = _require_root(_opt(cfg, "root"))
    size = _opt(cfg, "image_size")
    arrays = _load_image_folder(
        root_path,
        _opt(cfg, "channels"),
        None if size is None else int(size),
        float(_opt(cfg, "test_fraction")),
        int(_opt(cfg, "split_seed")),
        stream_mode(cfg),
        bool(_opt(cfg, "verify")),
    )
    return (*arrays, str(root_path.absolute()))


def _image_folder_ensure(root: Any, download: bool, url: str | None, *_: Any) -> tuple[Path, str]:
    # Nothing to download: only check that the user's folder is there.
    root_path = _require_root(root)
    _class_folders(root_path / "train" if (root_path / "train").is_dir() else root_path)
    return root_path, "found in"


DATASETS.register("image_folder")(DatasetSource(_image_folder_load, _image_folder_ensure))


# --------------------------------------------------------------------------- common


def _limit(x: np.ndarray, y: np.ndarray, n: int | None, seed: int, stream: int) -> tuple:
    """Keep ``n`` images, picked by a shuffle (seeded by split_seed) so classes stay mixed."""
    if n is None or n >= len(x):
        return x, y
    keep = np.random.default_rng([seed, stream]).permutation(len(x))[:n]
    return x[keep], y[keep]


def _to_gray(x: np.ndarray) -> np.ndarray:
    # PIL's convert("L") formula (ITU-R 601-2 luma) in its fixed-point form, vectorised.
    x = x.astype(np.uint32)
    gray = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return gray.astype(np.uint8)[..., None]


def adapt_images(
    x: np.ndarray | ImageFiles, size: int | None, channels: int | None
) -> np.ndarray | ImageFiles:
    """Resize to size x size and convert to ``channels`` (None: keep); ImageFiles are only
    told to decode so."""
    if isinstance(x, ImageFiles):
        h, w = (x.height, x.width) if size is None else (size, size)
        c = x.channels if channels is None else channels
        return x if (h, w, c) == x.image_shape else x.with_format(h, w, c)
    if channels == 1 and x.shape[-1] == 3:
        x = _to_gray(x)
    if size is not None and x.shape[1:3] != (size, size):
        out = np.empty((len(x), size, size, x.shape[-1]), np.uint8)
        for i, img in enumerate(x):
            im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            out[i] = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR)).reshape(
                out.shape[1:]
            )
        x = out
    if channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


_ABSENT = object()


def _opt(cfg: Any, key: str) -> Any:
    """``cfg.key``; a key that a hand-built cfg (a namespace) lacks takes the default of
    its dataset's schema (None where the schema has no such key)."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        value = getattr(cfg, key, _ABSENT)
    except MissingMandatoryValue:  # ``???``: not set
        return None
    if value is _ABSENT:
        from tripletlab.config import schema_default

        value = schema_default("dataset", getattr(cfg, "name", None), key)
    return None if isinstance(value, str) and value == "???" else value  # a schema's MISSING


def load_dataset(cfg: Any) -> Dataset:
    """Load the dataset described by ``cfg`` (its option's schema, e.g. a DigitsConfig, or
    a DictConfig or namespace like one)."""
    name = str(getattr(cfg, "name", ""))
    source = DATASETS.get(name)  # ConfigError naming the valid names
    channels = _opt(cfg, "channels")
    size = _opt(cfg, "image_size")
    test_fraction = _opt(cfg, "test_fraction")
    if channels not in (None, 1, 3):
        raise ConfigError(f"dataset.channels={channels!r} is not valid; use 1, 3 or null")
    if size is not None and int(size) < 1:
        raise ConfigError(f"dataset.image_size={size!r} must be > 0")
    if test_fraction is not None and not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"dataset.test_fraction={test_fraction!r} must be between 0 and 1")
    size = None if size is None else int(size)
    seed = int(_opt(cfg, "split_seed"))
    split = str(_opt(cfg, "split") or "original")
    train_classes = _opt(cfg, "train_classes")
    if split not in DATASET_SPLITS:
        raise ConfigError(
            f"dataset.split={split!r} is not valid; choose one of: {', '.join(DATASET_SPLITS)}"
        )
    if train_classes is not None and split != "classes":
        raise ConfigError(
            f"dataset.train_classes is set but dataset.split={split}: add dataset.split=classes"
        )
    loaded = source.load(cfg)
    if isinstance(loaded, Dataset):
        data = loaded
    else:
        x_train, y_train, x_test, y_test, class_names, where = loaded
        data = Dataset(name, x_train, y_train, x_test, y_test, list(class_names), where)
    data.name = name
    if split == "classes":
        split_by_classes(data, train_classes)

    # Truncate before adapting so tiny runs do not resize images they then drop.
    x_train, y_train = _limit(data.x_train, data.y_train, _opt(cfg, "max_train"), seed, 1)
    x_test, y_test = _limit(data.x_test, data.y_test, _opt(cfg, "max_test"), seed, 2)

    def adapt(x):
        x = adapt_images(x, size, channels)
        return x if isinstance(x, ImageFiles) else np.ascontiguousarray(x)

    data.x_train, data.y_train = adapt(x_train), np.asarray(y_train, np.int64)
    data.x_test, data.y_test = adapt(x_test), np.asarray(y_test, np.int64)
    if data.x_gallery is not None:
        data.x_gallery = adapt(data.x_gallery)
        data.y_gallery = np.asarray(data.y_gallery, np.int64)
    return data


def _concatenate(parts: list[Any]) -> Any:
    if all(isinstance(p, ImageFiles) for p in parts):
        return ImageFiles.concatenate(parts)
    return np.concatenate([np.asarray(p) for p in parts])


def _class_ids(entries: Sequence[Any], class_names: Sequence[str]) -> np.ndarray:
    """``dataset.train_classes`` entries (class names or ids) -> ids into class_names."""
    ids = []
    for entry in entries:
        text = str(entry)
        if text in class_names:
            ids.append(list(class_names).index(text))
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
            ids.append(int(text))
        else:
            shown = ", ".join(repr(n) for n in list(class_names)[:12])
            more = ", ..." if len(class_names) > 12 else ""
            raise ConfigError(
                f"dataset.train_classes has {entry!r}, which is neither a class name nor a "
                f"class id 0..{len(class_names) - 1}; the classes: {shown}{more}"
            )
    return np.unique(np.asarray(ids, np.int64))


def split_by_classes(data: Dataset, train_classes: Sequence[Any] | None = None) -> None:
    """The unseen-class protocol, in place: pool every split (gallery too), train on the
    first half of the classes present (sorted by id) or on ``train_classes``, test on the
    others. Labels keep their ids, so class_names still name them."""
    xs = [data.x_train, data.x_test]
    ys = [data.y_train, data.y_test]
    if data.x_gallery is not None:
        xs.append(data.x_gallery)
        ys.append(data.y_gallery)
    x, y = _concatenate(xs), np.concatenate([np.asarray(v, np.int64) for v in ys])
    present = np.unique(y)
    if train_classes is None:
        chosen = present[: len(present) // 2]
    else:
        chosen = _class_ids(train_classes, data.class_names)
        absent = np.setdiff1d(chosen, present)
        if len(absent):
            raise ConfigError(
                f"dataset.train_classes names classes without images: "
                f"{[data.class_names[i] for i in absent]}"
            )
    test_classes = np.setdiff1d(present, chosen)
    for side, classes in (("training", chosen), ("test", test_classes)):
        if len(classes) < 2:
            raise ConfigError(
                f"dataset.split=classes leaves {len(classes)} class(es) for {side} "
                f"({len(present)} classes in all): each side needs at least 2; "
                "change dataset.train_classes"
            )
    mask = np.isin(y, chosen)
    data.x_train, data.y_train = x[mask], y[mask]
    data.x_test, data.y_test = x[~mask], y[~mask]
    data.x_gallery = data.y_gallery = None


def fetch(
    name: str,
    root: Any = None,
    download: bool = True,
    url: str | None = None,
    allow_insecure_url: bool = False,
) -> tuple[Path, str]:
    """Make sure dataset ``name``'s files are present and readable (``tripletlab-fetch``).

    Returns the folder and how it was found ("found in", "downloaded from URL to"...).
    Raises DataError when the files are missing (and not downloaded) or corrupt, ConfigError
    for an http:// or file:// URL without ``allow_insecure_url``.
    """
    return _ensure(name, root, download, url, allow_insecure_url)


# The benchmark layouts register themselves (they build on this module, so they come last).
from tripletlab import layouts  # noqa: E402, F401


def conform_images(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 [N, h, w, c] -> [N, H, W, C] = shape: resized (bilinear) and grey <-> RGB.

    The same conversions as ``tripletlab.data`` (PIL's luma formula, bilinear resizing).
    """
    from PIL import Image

    h, w, c = (int(s) for s in shape)
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 4:
        x = x[..., :3]
    if h == w:
        x = adapt_images(x, h, c)
    else:
        x = adapt_images(x, None, c)
        if x.shape[1:3] != (h, w):
            out = np.empty((len(x), h, w, x.shape[-1]), np.uint8)
            for i, img in enumerate(x):
                im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
                resized = im.resize((w, h), Image.Resampling.BILINEAR)
                out[i] = np.asarray(resized).reshape(out.shape[1:])
            x = out
    return np.ascontiguousarray(x)
