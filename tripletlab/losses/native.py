"""The "native" mining engine: batch-all and semi-hard in one C++ pass per anchor
(``native_mining.cc``), built on first use with the machine's C++ compiler.

Why: TensorFlow's CPU ops have no fast per-row sort or search (``tf.sort`` of a [1024, 1024]
matrix takes ~27 ms, ``tf.searchsorted`` ~22 ms on 2 EPYC cores), so with large classes
(10 classes in a batch of 1024: ~100 positives per anchor) the TensorFlow engines took 7-10x
batch-hard's time. The kernel returns the same integers as they do (engines.py); the loss
and its gradient stay TensorFlow ops.

The build: ``c++ -O3 -march=native`` against the installed TensorFlow's headers
(``tf.sysconfig``), ~10 s, into ``$XDG_CACHE_HOME/tripletlab/native/<key>/`` (default
``~/.cache``). The key hashes everything that changes the binary: the source, TensorFlow's
version, the compiler's version, the CPU's model and flags (``-march=native``). Processes that
build at once (pytest-xdist workers, a sweep's jobs) take a file lock; the library is written
under a temporary name and renamed, so no process loads half a file.

Without a compiler, when the build or the load fails, or with ``TRIPLETLAB_NATIVE=0``, the
engines use TensorFlow ops (``buckets``) and one warning says why; ``engine="native"`` then
raises :class:`Unavailable` with that reason. ``python -m tripletlab.losses.native`` builds
it and prints where.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_mining.cc")
SWITCH = "TRIPLETLAB_NATIVE"  # "0": never build nor load (the TensorFlow engines run)
LIBRARY_NAME = "native_mining.so"
OPS = ("tripletlab_batch_all_counts", "tripletlab_semi_hard_picks")
BUILD_TIMEOUT_S = 600  # the compiler's run (~10 s on 2 cores)
LOCK_TIMEOUT_S = 900  # waiting for another process's build


class Unavailable(RuntimeError):
    """The native kernels cannot be used here; the message says why and what to do."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tripletlab" / "native"


def _compiler() -> str:
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise Unavailable(
        "no C++ compiler (c++, g++ or clang++) is on PATH: install one (Debian: apt-get "
        f"install g++) for the fast kernels, or set {SWITCH}=0 to silence this"
    )


def _cpu() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags")]
    return "\n".join(dict.fromkeys(wanted))  # the first core's, once


def build_command(compiler: str, output: Path) -> list[str]:
    import tensorflow as tf

    flags = ["-O3", "-march=native", "-ffp-contract=off", "-w", "-shared", "-fPIC"]
    return [
        compiler,
        *flags,
        str(SOURCE),
        "-o",
        str(output),
        *tf.sysconfig.get_compile_flags(),
        *tf.sysconfig.get_link_flags(),
    ]


def library_path(compiler: str) -> Path:
    import tensorflow as tf

    version = subprocess.run(  # bytes: hashed, never decoded
        [compiler, "--version"], capture_output=True, check=False, timeout=60
    ).stdout
    parts = [SOURCE.read_bytes(), tf.__version__.encode(), version, _cpu().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return cache_root() / key / LIBRARY_NAME


def _lock(folder: Path, timeout_s: float = LOCK_TIMEOUT_S):
    """An exclusive lock on folder/.lock, held until the returned file is closed; Unavailable
    after ``timeout_s`` (another process holds it: a build that hangs)."""
    handle = open(folder / ".lock", "a")  # noqa: SIM115 (closed by the caller)
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): the rename below still keeps loads whole
        return handle
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise Unavailable(
                    f"another process has held {folder / '.lock'} for {timeout_s:.0f} s (a "
                    f"build that hangs?); remove {folder} to start over"
                ) from None
            time.sleep(0.2)


def build() -> Path:
    """Compile the kernels unless this machine's build is there; its path."""
    compiler = _compiler()
    path = library_path(compiler)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path.parent):
        if path.exists():  # another process built it while this one waited
            return path
        fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".so.partial")
        os.close(fd)
        log.info("building the native mining kernels (once per machine, ~10 s): %s", path)
        try:
            result = subprocess.run(
                build_command(compiler, Path(partial)),
                capture_output=True,
                check=False,
                timeout=BUILD_TIMEOUT_S,
            )
            if result.returncode != 0 or Path(partial).stat().st_size == 0:
                output = (result.stderr or result.stdout).decode(errors="replace")
                tail = "\n".join(output.splitlines()[-15:])
                raise Unavailable(f"the C++ build failed ({compiler}):\n{tail}")
            os.chmod(partial, 0o644)  # mkstemp's 0600 would keep other users out
            os.replace(partial, path)
        finally:
            Path(partial).unlink(missing_ok=True)
    return path


def _remedy() -> str:
    return (
        f"remove {cache_root()} to rebuild, or set {SWITCH}=0 to use TensorFlow ops (slower "
        "with large classes)"
    )


@cache
def _loaded():
    """(the op library, None), or (None, the Unavailable why): one attempt per process."""
    if os.environ.get(SWITCH, "1").strip() == "0":
        return None, Unavailable(f"{SWITCH}=0 turns the native kernels off")
    import tensorflow as tf

    try:
        path = build()
    except Unavailable as error:
        return None, error
    except (OSError, UnicodeError, subprocess.SubprocessError) as error:
        return None, Unavailable(f"the build could not run: {error}; {_remedy()}")
    try:
        library = tf.load_op_library(str(path))
    except (tf.errors.NotFoundError, OSError) as error:
        return None, Unavailable(f"TensorFlow could not load {path}: {error}; {_remedy()}")
    missing = [name for name in OPS if not hasattr(library, name)]
    if missing:
        return None, Unavailable(f"{path} lacks the ops {', '.join(missing)}; {_remedy()}")
    return library, None


def ops():
    """The loaded op library (``tripletlab_batch_all_counts``, ``tripletlab_semi_hard_picks``);
    raises :class:`Unavailable` with the reason (the build is tried once per process)."""
    library, error = _loaded()
    if error is not None:
        raise error
    return library


@cache
def available() -> bool:
    """Whether the kernels load here; the first time they do not, one warning says why."""
    try:
        ops()
        return True
    except Unavailable as error:
        log.warning(
            "batch-all and semi-hard use TensorFlow ops (slower with large classes): the "
            "native kernels are unavailable: %s",
            error,
        )
        return False


def main() -> int:
    """python -m tripletlab.losses.native: build the kernels now; 0 when they load."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ops()
    except Unavailable as error:
        print(f"native mining kernels unavailable: {error}", file=sys.stderr)
        return 1
    print(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
