"""TensorFlow's runtime for a run: threads, GPU memory, XLA and the precision policy.

Training, the reuse commands and the benchmarks set TensorFlow up through :func:`setup_tf`,
so the same config embeds the same way everywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up notices kept off stderr, unless
    ``TRIPLETLAB_TF_LOGS=1`` (or it is imported already).

    TensorFlow 2.21 prints its oneDNN notice through absl before absl's logging is set up, so
    ``TF_CPP_MIN_LOG_LEVEL`` does not silence it: stderr's file descriptor is pointed at
    /dev/null for the import only (:func:`stderr_to_devnull`). An import that fails still
    raises, with its traceback.
    """
    if "tensorflow" in sys.modules or tensorflow_logs_wanted():
        import tensorflow  # noqa: F401

        return
    with stderr_to_devnull():
        import tensorflow  # noqa: F401


def _identity(fd: int) -> tuple[int, int] | None:
    """(device, inode) of an open descriptor; None when it is closed."""
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino


@contextlib.contextmanager
def stderr_to_devnull():
    """File descriptor 2 on /dev/null for the block, then back where it was.

    The swap itself never raises: stderr closed on entry (nothing to silence), a flush that
    fails, or the saved descriptor closed or replaced during the block (a library closing
    descriptors, a process being torn down) leave descriptor 2 as it is instead of ending in
    ``OSError: [Errno 9] Bad file descriptor``. A saved descriptor whose number now names
    another file is not put back on stderr.
    """
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    ours: dict[int, tuple[int, int] | None] = {}  # descriptor -> what it was opened on
    saved = None
    with contextlib.suppress(OSError):
        saved = os.dup(2)
        ours[saved] = _identity(saved)
        devnull = os.open(os.devnull, os.O_WRONLY)
        ours[devnull] = _identity(devnull)
        os.dup2(devnull, 2)
    try:
        yield
    finally:
        # Only descriptors that still are what we opened: a number closed and reused during
        # the block belongs to someone else now.
        still = {fd for fd, identity in ours.items() if identity and _identity(fd) == identity}
        if saved in still:
            with contextlib.suppress(OSError):
                os.dup2(saved, 2)
        for fd in still:
            with contextlib.suppress(OSError):
                os.close(fd)


def tensorflow_logs_wanted() -> bool:
    """``TRIPLETLAB_TF_LOGS=1``: show TensorFlow's own start-up lines."""
    return os.environ.get("TRIPLETLAB_TF_LOGS", "").strip().lower() in ("1", "true", "yes")


# trainer.mixed_precision (auto resolved) -> Keras policy name.
PRECISION_POLICIES = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


@dataclass(frozen=True)
class Runtime:
    """What :func:`setup_tf` chose: XLA on or off, the precision ("off" is float32), the device."""

    jit_compile: bool
    precision: str
    device: str


def normalize_precision(value) -> str:
    """YAML reads a bare ``off`` as False: accept it, and None, as "off"."""
    if value is None or value is False or str(value).lower() in ("false", "none", "no", "off"):
        return "off"
    return str(value)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags from ``cpuinfo`` (empty where there is none)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def has_fast_bfloat16(gpus: list, flags: set[str] | None = None) -> bool:
    """Whether bfloat16 matrix units make mixed precision pay off here.

    GPU: compute capability 8.0 or later (Ampere on). CPU: Intel AMX (``amx_bf16`` in
    ``flags``, by default this machine's), where oneDNN runs bfloat16 convolutions several
    times faster than float32 (``python -m tripletlab.bench train`` measures it). AVX512-BF16
    alone was not measured, so it stays float32.
    """
    if gpus:
        import tensorflow as tf

        details = tf.config.experimental.get_device_details(gpus[0])
        return tuple(details.get("compute_capability") or (0, 0)) >= (8, 0)
    return "amx_bf16" in (cpu_flags() if flags is None else flags)


def resolve_precision(value, gpus: list, flags: set[str] | None = None) -> str:
    """``trainer.mixed_precision`` with ``auto`` resolved: bfloat16 or off."""
    precision = normalize_precision(value)
    if precision == "auto":
        precision = "bfloat16" if has_fast_bfloat16(gpus, flags) else "off"
    return precision


def setup_tf(trainer) -> Runtime:
    """Threads, GPU memory growth and the precision policy from ``trainer`` (TrainerConfig).

    ``trainer.jit_compile=auto`` means XLA on a GPU and not on a CPU, where it made the step
    slower; ``trainer.mixed_precision=auto`` means bfloat16 where ``has_fast_bfloat16``.
    Sets Keras' global policy: callers that must not leak it restore it themselves.
    """
    import_tensorflow_quietly()
    import keras
    import tensorflow as tf

    if trainer.threads:
        # Parallel jobs on one machine split the cores instead of oversubscribing them.
        with contextlib.suppress(RuntimeError):  # already initialised in this process
            tf.config.threading.set_intra_op_parallelism_threads(trainer.threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(trainer.threads, 2))
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    jit = str(trainer.jit_compile).lower()
    jit_compile = bool(gpus) if jit == "auto" else jit == "true"
    precision = resolve_precision(trainer.mixed_precision, gpus)
    keras.mixed_precision.set_global_policy(PRECISION_POLICIES[precision])
    return Runtime(jit_compile, precision, "GPU" if gpus else "CPU")
