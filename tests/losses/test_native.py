"""The native mining kernels (tripletlab/losses/native_mining.cc, built by native.py): hand-
placed rows against counts worked out by hand, the ops' checks of their inputs, the build
(a fresh cache, two processes at once, a failing compiler, the switch) and the fallback.

Exactness against the brute force at many sizes and label patterns runs with the other
engines in test_engines.py (PATHS), test_blocked.py and test_strategies.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tripletlab.losses import engines, native

ROOT = Path(__file__).resolve().parents[2]
HAS_COMPILER = any(shutil.which(name) for name in ("c++", "g++", "clang++"))


def test_the_kernels_build_and_load_where_a_compiler_is():
    """On Linux with a C++ compiler the kernels load, and "auto" runs them for large
    classes: a broken build must fail here, not fall back unnoticed."""
    if not (sys.platform.startswith("linux") and HAS_COMPILER):
        pytest.skip("no C++ compiler on this Linux machine")
    assert native.available(), "the native kernels did not build or load (see the warning)"
    assert native.runs(False, tf.float32) and native.runs(False, tf.float64)
    assert not native.runs(True) and not native.runs(False, tf.float16)
    assert engines.auto_engine("semi_hard", 64, 64, 3) == "native"
    assert engines.auto_engine("batch_all", 64, 64, 3, soft_margin=True) == "slots"


def _row_inputs(d, labels, anchor):
    """One anchor row: (d [1, N], pos_cols [1, K], n_pos [1], own [1])."""
    cols = [j for j, y in enumerate(labels) if y == labels[anchor] and j != anchor]
    width = max(len(cols), 1)
    padded = cols + [anchor] * (width - len(cols))
    return (
        tf.constant([d], tf.float32),
        tf.constant([padded], tf.int32),
        tf.constant([len(cols)], tf.int32),
        tf.constant([anchor], tf.int32),
    )


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_batch_all_counts_of_a_hand_placed_row():
    """Anchor column 0 (label 0), positives 1, 2 (d 1 and 3), negatives 3-6 at d 0.5, 1.5,
    2, 3.5; margin 1: thresholds 2 and 4. c(p1) = #{n : d < 2} = 2 (1.5 counts, 2 is at the
    threshold: h = 0), c(p2) = #{d < 4} = 4; r(n) = thresholds above d_an: 2, 2, 1, 1."""
    d = [0.0, 1.0, 3.0, 0.5, 1.5, 2.0, 3.5]
    labels = [0, 0, 0, 1, 1, 2, 2]
    w, count = native.ops().tripletlab_batch_all_counts(*_row_inputs(d, labels, 0), 1.0)
    np.testing.assert_array_equal(w.numpy()[0], [0, 2, 4, -2, -2, -1, -1])
    assert int(count) == 6


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_semi_hard_picks_of_a_hand_placed_row():
    """Same row, anchor 0: positive 1 (d 1) takes the nearest negative farther than 1: column
    4 (1.5); positive 2 (d 3) takes column 6 (3.5); a negative at exactly d_ap is not farther
    (column 7 at d 3 is passed over); none farther: the farthest negative, the lowest column
    among equals (a second row: positives at d 4, negatives at 2, 2)."""
    d = [0.0, 1.0, 3.0, 0.5, 1.5, 2.0, 3.5, 3.0]
    labels = [0, 0, 0, 1, 1, 2, 2, 1]
    cols, picks = native.ops().tripletlab_semi_hard_picks(*_row_inputs(d, labels, 0))
    assert cols.numpy().tolist() == [[1, 2]] and picks.numpy().tolist() == [[4, 6]]
    d2 = [2.0, 0.0, 4.0, 2.0]
    cols, picks = native.ops().tripletlab_semi_hard_picks(*_row_inputs(d2, [1, 0, 0, 1], 1))
    assert cols.numpy().tolist() == [[2]] and picks.numpy().tolist() == [[0]]


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
@pytest.mark.parametrize(
    "pos_cols, n_pos, own, message",
    [
        ([[1, 2]], [3], [0], "n_pos"),  # more positives than the width
        ([[1, 9]], [2], [0], "pos_cols"),  # a column past N
        ([[1, -1]], [2], [0], "pos_cols"),
        ([[0, 1]], [2], [0], "pos_cols"),  # the anchor as its own positive
        ([[1, 2]], [2], [5], "own"),
        ([[1, 2]], [-1], [0], "n_pos"),
    ],
)
def test_the_ops_refuse_inputs_out_of_range(pos_cols, n_pos, own, message):
    """Indices out of range raise InvalidArgumentError naming the input; nothing is read
    outside the row."""
    d = tf.zeros([1, 4])
    args = (tf.constant(pos_cols), tf.constant(n_pos), tf.constant(own))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        native.ops().tripletlab_batch_all_counts(d, *args, 0.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        native.ops().tripletlab_semi_hard_picks(d, *args)


def _python(code, env_extra, timeout=300):
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


BUILD = """
    from tripletlab.losses import native
    native.ops()
    print("LIBRARY", native.build())
"""


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_two_processes_build_one_library_into_a_fresh_cache(tmp_path):
    """Two processes start at once on an empty cache (as two pytest-xdist workers or a
    sweep's jobs do): both load the same whole library, built once (the lock), and no
    partial file is left."""
    cache = tmp_path / "cache dir ü"  # a space and a non-ASCII letter in the path
    env = {"XDG_CACHE_HOME": str(cache), "TRIPLETLAB_NATIVE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(BUILD)],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    paths = {
        line.split(" ", 1)[1] for out, _ in outs for line in out.splitlines() if "LIBRARY" in line
    }
    assert len(paths) == 1
    library = Path(paths.pop())
    assert library.is_file() and cache in library.parents
    assert not list(library.parent.glob("*.partial"))
    builds = sum(err.count("building the native mining kernels") for _, err in outs)
    assert builds <= 1  # the second process found the first one's library


CHOICE = """
    import numpy as np, tensorflow as tf
    from tripletlab import losses
    from tripletlab.losses import engines, native, reference
    print("ENGINE", engines.auto_engine("semi_hard", 24, 24, 12))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 24).astype(np.int32)
    emb = rng.normal(size=(24, 3)).astype(np.float32)
    got = losses.triplet_loss(labels, emb, "semi_hard")
    want = reference.triplet_loss(labels, emb, "semi_hard")
    print("AUTO_OK", np.allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-5))
    try:
        losses.triplet_loss(labels, emb, "batch_all", engine="native")
    except native.Unavailable as error:
        print("UNAVAILABLE", str(error).splitlines()[0])
"""


def test_switched_off_the_engines_fall_back_to_tensorflow_ops(tmp_path):
    """TRIPLETLAB_NATIVE=0: nothing is built, "auto" runs buckets (same answer), one warning
    says why, and engine="native" raises Unavailable naming the switch."""
    result = _python(CHOICE, {"TRIPLETLAB_NATIVE": "0", "XDG_CACHE_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ENGINE buckets" in result.stdout and "AUTO_OK True" in result.stdout
    assert "UNAVAILABLE TRIPLETLAB_NATIVE=0 turns the native kernels off" in result.stdout
    assert result.stderr.count("native kernels are unavailable") == 1
    assert not (tmp_path / "tripletlab").exists()


def test_a_failing_compiler_falls_back_with_its_message(tmp_path):
    """A compiler that fails (here a `c++` on PATH that prints an error and exits 1): the
    engines fall back, the warning carries the compiler's last lines, no library is left."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "c++"
    fake.write_text("#!/bin/sh\necho 'fatal error: no headers today' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TRIPLETLAB_NATIVE": "1",
    }
    result = _python(CHOICE, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ENGINE buckets" in result.stdout and "AUTO_OK True" in result.stdout
    assert "UNAVAILABLE the C++ build failed" in result.stdout
    assert "fatal error: no headers today" in result.stderr
    assert not list((tmp_path / "cache").rglob("*.so"))
