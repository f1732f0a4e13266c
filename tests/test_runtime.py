"""TensorFlow's runtime choices: CPU flags, automatic precision, threads of parallel jobs.

Every expected value below is written by hand from what README promises ("auto: bfloat16 on
CPUs with AMX ... else off"; "each job gets cpu_count // n_jobs threads"), never computed
by the function under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tripletlab.runtime import cpu_flags, has_fast_bfloat16, resolve_precision
from tripletlab.sweep import parallel_threads

# Trimmed copies of real /proc/cpuinfo files. A Sapphire Rapids Xeon (AMX) ...
XEON_AMX = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
bogomips\t: 4000.00

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
# ... a Cooper Lake Xeon: AVX512-BF16 but no AMX (not measured: stays float32) ...
XEON_AVX512_BF16 = """\
processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8380H
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512_bf16 avx512_vnni
"""
# ... and an ARM board, whose cpuinfo says "Features", not "flags".
ARM = """\
processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16
CPU implementer\t: 0x41
"""


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text: str):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return path

    return write


def test_cpu_flags_reads_the_flags_line(cpuinfo):
    flags = cpu_flags(cpuinfo(XEON_AMX))
    assert {"amx_bf16", "amx_tile", "avx512f", "fpu"} <= flags
    assert "bogomips" not in flags and "GenuineIntel" not in flags  # other lines stay out
    assert cpu_flags(cpuinfo(XEON_AVX512_BF16)) == {
        "fpu",
        "sse",
        "sse2",
        "avx",
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
    }


def test_cpu_flags_without_a_flags_line_or_file_is_empty(cpuinfo, tmp_path):
    assert cpu_flags(cpuinfo(ARM)) == set()
    assert cpu_flags(cpuinfo("")) == set()
    assert cpu_flags(tmp_path / "no-such-file") == set()


@pytest.mark.parametrize(
    ("text", "fast"),
    [(XEON_AMX, True), (XEON_AVX512_BF16, False), (ARM, False), ("", False)],
    ids=["amx", "avx512_bf16-only", "arm", "empty"],
)
def test_fast_bfloat16_on_a_cpu_means_amx(cpuinfo, text, fast):
    assert has_fast_bfloat16([], cpu_flags(cpuinfo(text))) is fast


@pytest.mark.parametrize(
    ("value", "text", "expected"),
    [
        ("auto", XEON_AMX, "bfloat16"),
        ("auto", XEON_AVX512_BF16, "off"),
        ("auto", ARM, "off"),
        # Explicit choices win over the hardware, both ways.
        ("off", XEON_AMX, "off"),
        ("bfloat16", ARM, "bfloat16"),
        ("float16", XEON_AMX, "float16"),
        # YAML reads a bare `off` as False; `null` is off too.
        (False, XEON_AMX, "off"),
        (None, XEON_AMX, "off"),
        ("false", XEON_AMX, "off"),
    ],
)
def test_resolve_precision_on_a_cpu(cpuinfo, value, text, expected):
    assert resolve_precision(value, [], cpu_flags(cpuinfo(text))) == expected


@pytest.mark.parametrize(
    ("n_jobs", "cpus", "threads"),
    [
        (1, 2, 2),  # one job: every core
        (2, 2, 1),  # `hydra/launcher=parallel` on this 2-core machine
        (3, 2, 1),  # more jobs than cores: never 0 threads
        (2, 16, 8),
        (3, 16, 5),  # rounded down: 3 x 5 = 15 of 16 cores
        (4, 16, 4),
        (16, 16, 1),
        (32, 16, 1),
    ],
)
def test_parallel_jobs_split_the_cores(n_jobs, cpus, threads):
    assert parallel_threads(n_jobs, cpus) == threads


def test_auto_precision_on_this_machine_sets_the_keras_policy():
    """setup_tf with trainer.mixed_precision=auto on this CPU: bfloat16 exactly when its
    /proc/cpuinfo lists amx_bf16 (read here by hand), and Keras' global policy follows."""
    import keras
    import tensorflow as tf

    from tripletlab import compose
    from tripletlab.runtime import setup_tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("auto follows the GPU's compute capability there, not the CPU's flags")
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    expected = "bfloat16" if "amx_bf16" in flags else "off"
    cfg = compose(["trainer.mixed_precision=auto"])
    before = keras.mixed_precision.global_policy().name
    try:
        runtime = setup_tf(cfg.trainer)
        policy = keras.mixed_precision.global_policy().name
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert runtime.device == "CPU" and runtime.precision == expected
    assert policy == {"bfloat16": "mixed_bfloat16", "off": "float32"}[expected]


# ------------------------------------------------- stderr's descriptor on /dev/null and back
# Run in a fresh process (its descriptors are its own), which reports what it saw as JSON.
_SWAP = r"""
import json, os, sys
from tripletlab.runtime import stderr_to_devnull

case, impostor = sys.argv[1], sys.argv[2]
def is_open(fd):
    try:
        return bool(os.fstat(fd))
    except OSError:
        return False
fds = lambda: {fd for fd in range(256) if is_open(fd)}
ident = lambda fd: list(os.fstat(fd)[1:3])
say = lambda text: case == "stderr closed" or print(text, file=sys.stderr, flush=True)
start, stderr = fds(), ident(2)
if case == "stderr closed":
    os.close(2)
kept = []
for _ in range(50 if case == "repeated" else 1):
    opened = fds()
    with stderr_to_devnull():
        say("hidden")
        mine = sorted(fds() - opened)  # the saved descriptor and /dev/null's
        if case in ("closed in the block", "reused in the block"):
            for fd in mine:
                os.close(fd)
        if case == "reused in the block":  # the same numbers, now someone else's files
            kept = [os.open(impostor, os.O_WRONLY | os.O_CREAT | os.O_APPEND) for _ in mine]
            assert kept == mine, (kept, mine)
say("shown")
report = {"mine": mine, "leaked": sorted(fds() - start - set(kept)), "kept_open": []}
report["kept_open"] = [fd for fd in kept if is_open(fd)]
if case != "stderr closed":
    report["stderr_restored"] = ident(2) == stderr
print(json.dumps(report))
"""


@pytest.mark.parametrize(
    "case", ["once", "repeated", "closed in the block", "reused in the block", "stderr closed"]
)
def test_stderr_swap_never_raises_and_restores_what_it_can(case, tmp_path):
    """The fd swap around TensorFlow's import (tripletlab.runtime.stderr_to_devnull): a
    closed or reused saved descriptor, or stderr closed on entry, end without an exception
    (no ``OSError: [Errno 9]``, at the swap or at exit); what can be restored is."""
    import json
    import subprocess
    import sys

    impostor = tmp_path / "impostor"
    proc = subprocess.run(
        [sys.executable, "-c", _SWAP, case, str(impostor)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    assert "Errno 9" not in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["mine"]) == (0 if case == "stderr closed" else 2)
    assert report["leaked"] == []
    if case in ("once", "repeated"):
        assert report["stderr_restored"] and proc.stderr == "shown\n"
    if case == "reused in the block":
        # The numbers are someone else's now: neither closed nor put on stderr.
        assert report["kept_open"] == report["mine"]
        assert impostor.read_text() == ""
        assert not report["stderr_restored"]  # the original stderr is gone; /dev/null stays
    if case == "closed in the block":
        assert not report["stderr_restored"]
