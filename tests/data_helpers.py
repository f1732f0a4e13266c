"""Small generated datasets for tests: IDX folders, image folders and a local HTTP mirror."""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from tripletlab.data import IDX_FILES, write_idx


def idx_arrays(
    n: int, shape: tuple[int, int] = (6, 6), num_classes: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and labels cycling through every class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = (np.arange(n) % num_classes).astype(np.uint8)
    return x, y


def write_idx_folder(
    folder: Path,
    n_train: int = 20,
    n_test: int = 10,
    gz: bool = True,
    shape: tuple[int, int] = (6, 6),
    sorted_labels: bool = False,
) -> dict[str, np.ndarray]:
    """Write the four Fashion-MNIST-style IDX files; return the arrays by IDX_FILES key."""
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = idx_arrays(n_train, shape, seed=1)
    x_test, y_test = idx_arrays(n_test, shape, seed=2)
    if sorted_labels:  # all of class 0 first: a plain prefix would hold one class only
        y_train, y_test = np.sort(y_train), np.sort(y_test)
    arrays = {
        "train_images": x_train,
        "train_labels": y_train,
        "test_images": x_test,
        "test_labels": y_test,
    }
    suffix = ".gz" if gz else ""
    for key, array in arrays.items():
        write_idx(folder / f"{IDX_FILES[key]}{suffix}", array)
    return arrays


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_image_folder(
    root: Path,
    counts: dict[str, int],
    size: tuple[int, int] = (8, 8),
    colour: bool = False,
    ext: str = ".png",
    seed: int = 0,
) -> None:
    """One sub-folder per class holding ``counts[class]`` random images."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if colour else (size[1], size[0])
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_image(root / name / f"{i}{ext}", rng.integers(0, 256, shape, dtype=np.uint8))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep request lines out of the test output


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 in a thread; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval: shutdown() waits for the next poll (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
