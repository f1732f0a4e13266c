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

import tensorflow as tf

from tripletlab.losses.pieces import positive_columns, semi_hard_items

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


# --------------------------------------------------------------------------------------------
# The engine: what engines.py's "native" runs (the same contracts as its buckets engine)
# --------------------------------------------------------------------------------------------


def runs(jit_compile: bool, dtype=None) -> bool:
    """Whether "auto" runs the native kernels: not under XLA (a custom op), d float32 or
    float64, no GPU visible (the kernels run on the CPU), and they load here."""
    if jit_compile or tf.as_dtype(dtype or tf.float32) not in (tf.float32, tf.float64):
        return False
    return not tf.config.list_logical_devices("GPU") and available()


def _kernels(dtype):
    """The op library for distances of ``dtype``; Unavailable / ValueError says why
    engine="native" cannot run."""
    if tf.as_dtype(dtype) not in (tf.float32, tf.float64):
        raise ValueError(f"engine='native' takes float32 or float64 distances, not {dtype.name}")
    return ops()


def _inputs(blocks):
    """The kernels' inputs besides d: (positive columns [B, K] int32, own column in the
    padding; n_pos [B]; own [B]), K = max(largest number of positives, 1)."""
    k = tf.maximum(tf.reduce_max(blocks.n_pos), 1)
    cols, _ = positive_columns(blocks, k)
    return cols, blocks.n_pos, blocks.own


def batch_all(d, margin, blocks):
    """engines.batch_all_buckets' contract (w [B, N], count [] int64), in one C++ pass per
    anchor. O(B N (K / 16 + 4) + B K log K)."""
    w, count = _kernels(d.dtype).tripletlab_batch_all_counts(d, *_inputs(blocks), margin)
    return w, count


def semi_hard(d, margin, soft_margin, blocks):
    """engines.semi_hard_buckets' contract (sum, number active, d sum / d d [B, N]); the
    kernel gives each positive's column and pick, [B, K]."""
    cols, pick = _kernels(d.dtype).tripletlab_semi_hard_picks(d, *_inputs(blocks))
    exists = tf.range(tf.shape(cols)[1])[None, :] < blocks.n_pos[:, None]
    d_ap = tf.gather(d, cols, batch_dims=1)
    has_neg = blocks.n_pos + 1 < tf.shape(d)[1]
    return semi_hard_items(d, d_ap, cols, pick, exists, has_neg, margin, soft_margin)


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
