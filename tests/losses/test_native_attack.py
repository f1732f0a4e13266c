"""Attacks on the native mining engine (tripletlab/losses/native_mining.cc, native.py): the
ops' integers against their definitions on rows full of ties, around the kernel's blocks of
16 positives; the losses against the brute force and the "buckets" engine on edge cases;
bad inputs to the ops; and the build's failure modes, each in a fresh process.

The review found six bugs, now fixed and kept here as regression tests: a non-scalar margin
aborted the process; a compiler that cannot run, whose --version is not UTF-8, or a cache
folder that cannot be written raised instead of falling back; a loadable library without
the ops passed for the kernels; memory labels beyond int32 wrapped into a batch class."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tripletlab import losses
from tripletlab.losses import engines, native, reference

ROOT = Path(__file__).resolve().parents[2]
HAS_COMPILER = any(shutil.which(name) for name in ("c++", "g++", "clang++"))
MINED = ("batch_all", "semi_hard")

needs_kernels = pytest.mark.skipif(
    not (HAS_COMPILER and sys.platform.startswith("linux")), reason="no C++ compiler"
)


def _kernels():
    try:
        return native.ops()
    except native.Unavailable as error:  # pragma: no cover - a build failure fails elsewhere
        pytest.skip(f"native kernels unavailable: {error}")


# --------------------------------------------------------------------------------------------
# 1. The ops' integers against their definitions (numpy), rows with ties and many positives
# --------------------------------------------------------------------------------------------


def _definition_batch_all(d, pos, own, margin):
    """w [R, N], count: c(a, p) = #{n : d_an < d_ap + m}, -r(a, n) = -#{p : d_ap + m > d_an}."""
    r, n = d.shape
    w = np.zeros_like(d)
    count = 0
    for a in range(r):
        p_cols = list(pos[a])
        negs = [j for j in range(n) if j != own[a] and j not in set(p_cols)]
        for p in p_cols:
            c = sum(1 for j in negs if d[a, j] < d[a, p] + margin)
            w[a, p] = c
            count += c
        for j in negs:
            w[a, j] = -sum(1 for p in p_cols if d[a, p] + margin > d[a, j])
    return w, count


def _definition_semi_hard(d, pos, own):
    """{positive column: picked column} per row: the nearest negative strictly farther
    (lowest column among equals), else the farthest (lowest column among equals), else 0."""
    r, n = d.shape
    out = []
    for a in range(r):
        negs = [j for j in range(n) if j != own[a] and j not in set(pos[a])]
        row = {}
        for p in pos[a]:
            farther = [j for j in negs if d[a, j] > d[a, p]]
            if farther:
                row[p] = min(farther, key=lambda j: (d[a, j], j))
            elif negs:
                row[p] = max(negs, key=lambda j: (d[a, j], -j))
            else:
                row[p] = 0
        out.append(row)
    return out


def _op_inputs(rng, rows, n, sizes, levels):
    """d [rows, n] on an integer grid of `levels` values (ties everywhere, 0 included),
    positives per row of the given sizes (random columns other than own), padded with own."""
    d = rng.integers(0, levels, size=(rows, n)).astype(np.float64)
    width = max(max(sizes), 1)
    own = rng.integers(0, n, size=rows)
    pos = []
    cols = np.zeros((rows, width), np.int32)
    for a in range(rows):
        others = np.setdiff1d(np.arange(n), [own[a]])
        p = rng.choice(others, size=sizes[a], replace=False)
        pos.append([int(x) for x in p])
        cols[a] = own[a]
        cols[a, : sizes[a]] = p
        d[a, own[a]] = 0.0
    return d, pos, cols, np.asarray(sizes, np.int32), own.astype(np.int32)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [20, 47, 150])
def test_ops_match_their_definitions_on_ties_around_blocks_of_16(n, dtype):
    """Rows with 0, 1, 15, 16, 17, 31, 32, 33, ... positives (the coarse count over every 16th
    value, the four-step search, AVX-512 over 16 columns and the scalar tail), distances on a
    grid of 3 or 7 values (thresholds tie with distances, with each other, and at 0), margins
    0, 1 (d_ap + m lands exactly on other distances), -1 and 100."""
    kernels = _kernels()
    rng = np.random.default_rng(n)
    sizes = [s for s in (0, 1, 2, 15, 16, 17, 31, 32, 33, 48, 64, 100, 140) if s < n]
    sizes += [n - 1]  # every other column a positive: no negative at all
    for levels in (3, 7):
        d, pos, cols, n_pos, own = _op_inputs(rng, len(sizes), n, sizes, levels)
        d = d.astype(dtype)
        for margin in (0.0, 1.0, -1.0, 100.0):
            w, count = kernels.tripletlab_batch_all_counts(
                d, cols, n_pos, own, tf.constant(margin, dtype)
            )
            want_w, want_count = _definition_batch_all(d.astype(np.float64), pos, own, margin)
            np.testing.assert_array_equal(w.numpy(), want_w)
            assert int(count) == want_count
        got_cols, picks = kernels.tripletlab_semi_hard_picks(d, cols, n_pos, own)
        got_cols, picks = got_cols.numpy(), picks.numpy()
        want = _definition_semi_hard(d.astype(np.float64), pos, own)
        for a, k in enumerate(sizes):
            assert (
                dict(zip(got_cols[a, :k].tolist(), picks[a, :k].tolist(), strict=True)) == want[a]
            )
            assert sorted(got_cols[a, :k]) == sorted(pos[a])
            # nearest first
            assert np.all(np.diff(d[a, got_cols[a, :k]].astype(np.float64)) >= 0)
            assert np.all(got_cols[a, k:] == own[a]) and np.all(picks[a, k:] == own[a])


@needs_kernels
def test_ops_on_nan_inf_and_negative_distances_do_not_crash():
    """d with NaN, +inf, -inf, -0.0 and negative values, NaN and +-inf margins: no crash,
    shapes right; the finite negatives of a row without NaN keep their definition."""
    kernels = _kernels()
    rng = np.random.default_rng(1)
    d, pos, cols, n_pos, own = _op_inputs(rng, 6, 40, [3, 17, 20, 33, 5, 0], 5)
    d = d.astype(np.float32)
    d[0, 5:9] = np.nan
    d[1, ::3] = np.inf
    d[2, 1::4] = -np.inf
    d[3, ::2] = -0.0
    d[4] -= 2.5
    for margin in (np.nan, np.inf, -np.inf, 0.5):
        w, count = kernels.tripletlab_batch_all_counts(d, cols, n_pos, own, np.float32(margin))
        assert w.shape == d.shape and count.shape == ()
    # the rows without NaN follow the definitions (inf compared as IEEE does)
    clean = [1, 2, 3, 4, 5]
    w, _ = kernels.tripletlab_batch_all_counts(d, cols, n_pos, own, np.float32(0.5))
    want_w, _ = _definition_batch_all(
        d[clean].astype(np.float64), [pos[a] for a in clean], own[clean], 0.5
    )
    np.testing.assert_array_equal(w.numpy()[clean], want_w)
    got_cols, picks = kernels.tripletlab_semi_hard_picks(d, cols, n_pos, own)
    assert np.all((picks.numpy() >= 0) & (picks.numpy() < 40))
    want = _definition_semi_hard(d[clean].astype(np.float64), [pos[a] for a in clean], own[clean])
    for i, a in enumerate(clean):
        k = n_pos[a]
        got = dict(
            zip(got_cols.numpy()[a, :k].tolist(), picks.numpy()[a, :k].tolist(), strict=True)
        )
        assert got == want[i], a


# --------------------------------------------------------------------------------------------
# 2. The losses: native against the brute force and buckets
# --------------------------------------------------------------------------------------------


def _value_and_grad(strategy, labels, emb, **kwargs):
    emb = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(emb)
        loss, fraction = losses.triplet_loss(tf.constant(labels), emb, strategy, **kwargs)
    grad = tape.gradient(loss, emb)
    return np.array([float(loss), float(fraction)]), (None if grad is None else grad.numpy())


def _check(strategy, labels, emb, memory=None, dtype=np.float64, **options):
    """native == brute force (loss, fraction, gradient), and == buckets."""
    want = reference.triplet_loss(labels, emb, strategy, memory=memory, **options)
    want_grad = reference.triplet_loss_grad(labels, emb, strategy, memory=memory, **options)
    mem = None if memory is None else (memory[0], np.asarray(memory[1]).astype(dtype))
    got, grad = _value_and_grad(
        strategy, labels, emb.astype(dtype), memory=mem, engine="native", **options
    )
    rtol, atol = (1e-9, 1e-12) if dtype == np.float64 else (1e-5, 1e-6)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=atol * 10)
    other, other_grad = _value_and_grad(
        strategy, labels, emb.astype(dtype), memory=mem, engine="buckets", **options
    )
    np.testing.assert_allclose(got, other, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, other_grad, rtol=rtol, atol=atol * 10)


def _line_batch(seed, b=14, classes=2, spots=5):
    """Embeddings on the integer line (exact distance ties, coincident points, negatives at
    exactly d_ap and at d_ap + margin for integer margins), large classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, b).astype(np.int32)
    return labels, rng.integers(0, spots, (b, 1)).astype(np.float64)


@needs_kernels
@pytest.mark.parametrize("strategy", MINED)
def test_native_matches_brute_force_on_ties_margins_and_memory(strategy):
    _kernels()
    labels, emb = _line_batch(3)
    mem_labels, mem_emb = _line_batch(4, b=6, classes=3)
    softs = (False,) if strategy == "batch_all" else (False, True)
    for soft, squared, margin, memory in itertools.product(
        softs, (False, True), (0.0, -0.5, 1.0, 25.0), (None, (mem_labels, mem_emb))
    ):
        if soft and margin != 1.0:
            continue
        options = {"margin": margin, "squared": squared, "soft_margin": soft}
        _check(strategy, labels, emb, memory=memory, **options)


@needs_kernels
@pytest.mark.parametrize("strategy", MINED)
def test_native_float32_ties_and_edge_batches(strategy):
    """float32 on the line; one class; no positives; B = 1 and 2; int64 and negative labels."""
    _kernels()
    labels, emb = _line_batch(5, b=12)
    _check(strategy, labels, emb, dtype=np.float32, margin=1.0)
    cases = [
        (np.zeros(6, np.int32), np.arange(6.0)[:, None]),  # one class: no negatives
        (np.arange(6, dtype=np.int32), np.arange(6.0)[:, None]),  # no positives
        (np.array([7], np.int32), np.array([[1.0, 2.0]])),  # B = 1
        (np.array([3, 3], np.int32), np.array([[1.0], [1.0]])),  # B = 2, coincident
        (np.array([3, 4], np.int32), np.array([[1.0], [2.0]])),
        (np.array([-(2**40), -1, -(2**40), 2**40, -1], np.int64), np.arange(5.0)[:, None] % 3),
    ]
    for labels, emb in cases:
        got, _ = _value_and_grad(strategy, labels, emb, engine="native")
        np.testing.assert_allclose(got, reference.triplet_loss(labels, emb, strategy), atol=1e-12)
    # memory only: every positive in the memory
    _check(
        strategy,
        np.arange(4, dtype=np.int32),
        np.arange(4.0)[:, None],
        memory=(np.array([0, 1, 0, 5]), np.array([[0.0], [3.0], [2.0], [1.0]])),
    )


@needs_kernels
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("strategy", MINED)
def test_native_takes_16_bit_embeddings(strategy, dtype):
    _kernels()
    labels, emb = _line_batch(6, b=16)
    want = reference.triplet_loss(labels, emb, strategy, margin=1.0)
    got = losses.triplet_loss(labels, tf.constant(emb, dtype), strategy, 1.0, engine="native")
    np.testing.assert_allclose([float(x) for x in got], want, rtol=1e-6)


@needs_kernels
@pytest.mark.parametrize("strategy", MINED)
def test_native_nan_and_inf_embeddings_give_nan(strategy):
    _kernels()
    labels, emb = _line_batch(7, b=20)
    for bad in (np.nan, np.inf, -np.inf):
        e = emb.copy()
        e[3, 0] = bad
        for engine in ("native", "auto"):
            loss, fraction = losses.triplet_loss(labels, e, strategy, engine=engine)
            assert np.isnan(float(loss)) and np.isnan(float(fraction))
        memory = (np.array([0, 1]), np.array([[0.0], [bad]]))
        loss, _ = losses.triplet_loss(labels, emb, strategy, memory=memory, engine="native")
        assert np.isnan(float(loss))


@needs_kernels
@pytest.mark.parametrize("strategy", MINED)
def test_native_with_unknown_batch_size_and_many_blocks(strategy, monkeypatch):
    """tf.function with [None, None] inputs, blocks of 1-3 rows (the last shorter)."""
    _kernels()
    monkeypatch.setattr(engines, "DENSE_ELEMENTS", 0)
    monkeypatch.setattr(engines, "BLOCK_ELEMENTS", 40)
    labels, emb = _line_batch(8, b=17, classes=3, spots=6)
    memory = (np.array([0, 2, 9]), np.array([[1.0], [2.0], [3.0]]))

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.float64)]
    )
    def run(y, e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            loss, fraction = losses.triplet_loss(
                y, e, strategy, 1.0, memory=memory, engine="native"
            )
        return loss, fraction, tape.gradient(loss, e)

    for b in (17, 5, 1):
        loss, fraction, grad = run(labels[:b], emb[:b])
        want = reference.triplet_loss(labels[:b], emb[:b], strategy, 1.0, memory=memory)
        want_grad = reference.triplet_loss_grad(labels[:b], emb[:b], strategy, 1.0, memory=memory)
        np.testing.assert_allclose([float(loss), float(fraction)], want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-9, atol=1e-12)


@needs_kernels
@pytest.mark.parametrize("strategy", MINED)
def test_native_huge_classes_match_buckets(strategy):
    """2 classes at B = 2048 (~1023 positives: 63 blocks of 16 in the kernel's search),
    embeddings on a 2-D integer grid (ties everywhere): native == buckets, loss, fraction
    and gradient."""
    _kernels()
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 2048).astype(np.int32)
    emb = rng.integers(0, 6, (2048, 2)).astype(np.float32)
    got, grad = _value_and_grad(strategy, labels, emb, margin=1.0, engine="native")
    want, want_grad = _value_and_grad(strategy, labels, emb, margin=1.0, engine="buckets")
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6 * np.abs(want_grad).max())


def test_int64_memory_labels_beyond_int32_stay_distinct():
    labels = np.array([0, 0, 1, 1], np.int32)
    emb = np.array([[0.0], [1.0], [3.0], [5.0]])
    memory = (np.array([2**32], np.int64), np.array([[0.5]]))
    want = reference.triplet_loss(labels, emb, "semi_hard", 1.0, memory=memory)
    got = losses.triplet_loss(labels, emb, "semi_hard", 1.0, memory=memory, engine="buckets")
    np.testing.assert_allclose([float(x) for x in got], want, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# 3. Bad inputs to the ops: a TensorFlow error, never a crash
# --------------------------------------------------------------------------------------------


def _bad_calls():
    f32 = np.float32
    d = np.arange(12, dtype=f32).reshape(3, 4)
    cols = np.array([[1, 2], [0, 2], [0, 1]], np.int32)
    n_pos = np.array([2, 2, 2], np.int32)
    own = np.array([0, 1, 2], np.int32)
    return {
        "d rank 1": (d.reshape(-1), cols, n_pos, own),
        "d rank 3": (d[None], cols, n_pos, own),
        "cols rows": (d, cols[:2], n_pos, own),
        "cols rank 1": (d, cols.reshape(-1), n_pos, own),
        "n_pos rows": (d, cols, n_pos[:2], own),
        "own rank 2": (d, cols, n_pos, own[:, None]),
        "n_pos > width": (d, cols, np.array([3, 2, 2], np.int32), own),
        "n_pos negative": (d, cols, np.array([-1, 2, 2], np.int32), own),
        "n_pos >= N": (d[:, :2], cols, n_pos, np.array([0, 1, 0], np.int32)),
        "column too large": (d, np.array([[1, 4], [0, 2], [0, 1]], np.int32), n_pos, own),
        "column negative": (d, np.array([[1, -1], [0, 2], [0, 1]], np.int32), n_pos, own),
        "own is a positive": (d, np.array([[0, 2], [0, 2], [0, 1]], np.int32), n_pos, own),
        "own out of range": (d, cols, n_pos, np.array([0, 1, 4], np.int32)),
        "own negative": (d, cols, n_pos, np.array([0, -1, 2], np.int32)),
        "d [R, 0]": (np.zeros((3, 0), f32), cols, np.zeros(3, np.int32), np.zeros(3, np.int32)),
    }


@needs_kernels
@pytest.mark.parametrize("case", sorted(_bad_calls()))
def test_bad_op_inputs_raise_a_tensorflow_error(case):
    kernels = _kernels()
    d, cols, n_pos, own = _bad_calls()[case]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        kernels.tripletlab_batch_all_counts(d, cols, n_pos, own, np.float32(0.5))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        kernels.tripletlab_semi_hard_picks(d, cols, n_pos, own)


@needs_kernels
def test_empty_and_one_column_inputs_work():
    kernels = _kernels()
    empty = (
        np.zeros((0, 5), np.float32),
        np.zeros((0, 1), np.int32),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
    )
    w, count = kernels.tripletlab_batch_all_counts(*empty, np.float32(0.5))
    assert w.shape == (0, 5) and int(count) == 0
    assert kernels.tripletlab_semi_hard_picks(*empty)[1].shape == (0, 1)
    zero = (
        np.zeros((0, 0), np.float64),
        np.zeros((0, 0), np.int32),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
    )
    assert kernels.tripletlab_batch_all_counts(*zero, np.float64(0.5))[0].shape == (0, 0)
    one = (
        np.zeros((2, 1), np.float32),
        np.zeros((2, 0), np.int32),
        np.zeros(2, np.int32),
        np.zeros(2, np.int32),
    )
    w, count = kernels.tripletlab_batch_all_counts(*one, np.float32(0.5))
    assert np.all(w.numpy() == 0) and int(count) == 0
    cols, picks = kernels.tripletlab_semi_hard_picks(*one)
    assert cols.shape == picks.shape == (2, 0)


def _python(code, env_extra=None, timeout=240):
    env = {**os.environ, **(env_extra or {}), "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@needs_kernels
def test_a_non_scalar_margin_raises_instead_of_aborting():
    result = _python("""
        import numpy as np, tensorflow as tf
        from tripletlab import losses
        from tripletlab.losses import native
        try:  # buckets: InvalidArgumentError (incompatible shapes)
            losses.triplet_loss(np.arange(12) % 3, np.eye(12, 3), "batch_all",
                                margin=np.array([0.5, 0.5]), engine="native")
        except (tf.errors.InvalidArgumentError, ValueError):
            print("API RAISED")
        d = np.zeros((2, 3), np.float32)
        args = (d, np.array([[1], [0]], np.int32), np.array([1, 1], np.int32),
                np.array([0, 1], np.int32))
        try:
            native.ops().tripletlab_batch_all_counts(*args, np.array([0.5, 0.5], np.float32))
        except tf.errors.InvalidArgumentError:
            print("OP RAISED")
    """)
    assert result.returncode == 0, result.stderr[-500:]
    assert "API RAISED" in result.stdout and "OP RAISED" in result.stdout


# --------------------------------------------------------------------------------------------
# 4. The build, each in a fresh process
# --------------------------------------------------------------------------------------------

# auto must give the brute force's answer; native either runs or raises Unavailable. SETUP
# (optional) runs first in the same process: it may place files in the cache before the
# first loss loads the kernels.
PROBE = """
    import json, numpy as np
    from tripletlab import losses
    from tripletlab.losses import native, reference
    SETUP
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 24)
    emb = rng.integers(0, 4, (24, 2)).astype(np.float64)
    out = {"auto_ok": True, "auto_error": None}
    for strategy in ("batch_all", "semi_hard"):
        want = reference.triplet_loss(labels, emb, strategy, 1.0)
        try:
            got = [float(x) for x in losses.triplet_loss(labels, emb, strategy, 1.0)]
        except Exception as error:
            out["auto_ok"], out["auto_error"] = False, f"{type(error).__name__}: {error}"
            break
        out["auto_ok"] &= bool(np.allclose(got, want, rtol=1e-12, atol=0))
    try:
        got = [float(x) for x in losses.triplet_loss(labels, emb, "semi_hard", 1.0,
                                                      engine="native")]
        out["native"] = "ran" if np.allclose(got, reference.triplet_loss(labels, emb,
                                             "semi_hard", 1.0)) else "wrong"
    except native.Unavailable as error:
        out["native"] = "Unavailable: " + str(error)
    except Exception as error:
        out["native"] = f"{type(error).__name__}: {error}"
    print("RESULT " + json.dumps(out))
"""


def _probe_code(setup=""):
    code = textwrap.dedent(PROBE)
    return code.replace("SETUP", textwrap.indent(textwrap.dedent(setup), "").strip() or "pass")


def _probe(env_extra, setup="", timeout=240):
    result = _python(_probe_code(setup), env_extra, timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-1500:]
    return json.loads(lines[-1][len("RESULT ") :])


# the library's path in the cache, made ready for a file to be put there
AT_PATH = """
p = native.library_path(native._compiler())
p.parent.mkdir(parents=True, exist_ok=True)
"""


def _fake_compiler(tmp_path, script: bytes) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("c++", "g++", "clang++"):
        path = bin_dir / name
        path.write_bytes(script)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
@needs_kernels
def test_two_processes_build_at_once_into_a_cache_path_with_spaces_and_non_ascii(tmp_path):
    cache = tmp_path / "a cache ü€ dir"
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(cache),
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _probe_code()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        line = [x for x in out.splitlines() if x.startswith("RESULT ")]
        assert proc.returncode == 0 and line, err[-1500:]
        result = json.loads(line[-1][len("RESULT ") :])
        assert result == {"auto_ok": True, "auto_error": None, "native": "ran"}
    built = list(cache.rglob("*.so"))
    assert len(built) == 1 and not list(cache.rglob("*.partial"))


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
def test_switch_off_and_no_compiler_fall_back(tmp_path):
    result = _probe({"TRIPLETLAB_NATIVE": "0", "XDG_CACHE_HOME": str(tmp_path)})
    assert result["auto_ok"] and "TRIPLETLAB_NATIVE=0" in result["native"]
    assert not list(tmp_path.rglob("*.so"))
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    result = _probe({"PATH": str(empty), "XDG_CACHE_HOME": str(tmp_path / "c")})
    assert result["auto_ok"] and result["native"].startswith("Unavailable: no C++ compiler")


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
def test_a_compiler_that_exits_1_with_garbage_falls_back(tmp_path):
    """Its output holds shell syntax: nothing of it is run."""
    marker = tmp_path / "ran"
    env = _fake_compiler(tmp_path, f"#!/bin/sh\necho '$(touch {marker})'\nexit 1\n".encode())
    result = _probe(env)
    assert result["auto_ok"] and result["native"].startswith("Unavailable: the C++ build failed")
    assert not marker.exists()


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
@needs_kernels
def test_an_unwritable_cache_root_falls_back(tmp_path):
    """XDG_CACHE_HOME is a regular file: the cache folder cannot be made."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _probe({"XDG_CACHE_HOME": str(blocker)})
    assert result["auto_ok"] and result["native"].startswith("Unavailable: the build could not")
    assert "Not a directory" in result["native"] and "TRIPLETLAB_NATIVE=0" in result["native"]


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
@needs_kernels
def test_a_corrupt_library_at_the_path_falls_back_with_the_path(tmp_path):
    """Garbage bytes where the library should be: not rebuilt, but auto stays right and
    native says which file it could not load."""
    setup = AT_PATH + 'p.write_bytes(b"\\x7fELF garbage" * 100)'
    result = _probe({"XDG_CACHE_HOME": str(tmp_path)}, setup)
    assert result["auto_ok"] and "could not load" in result["native"]
    assert "native_mining.so" in result["native"]


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
@needs_kernels
def test_a_foreign_library_at_the_path_falls_back(tmp_path):
    """A shared library that loads but holds no ops (built here from an empty source)."""
    source = tmp_path / "empty.cc"
    source.write_text('extern "C" int tripletlab_nothing() { return 0; }\n')
    foreign = tmp_path / "foreign.so"
    compiler = next(shutil.which(n) for n in ("c++", "g++", "clang++") if shutil.which(n))
    subprocess.run([compiler, "-shared", "-fPIC", str(source), "-o", str(foreign)], check=True)
    setup = AT_PATH + f"import shutil; shutil.copy({str(foreign)!r}, p)"
    result = _probe({"XDG_CACHE_HOME": str(tmp_path / "cache")}, setup)
    assert result["auto_ok"] and result["native"].startswith("Unavailable"), result


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
def test_a_compiler_that_cannot_execute_falls_back(tmp_path):
    result = _probe(_fake_compiler(tmp_path, b""))  # an empty executable file: ENOEXEC
    assert result["auto_ok"] and result["native"].startswith("Unavailable"), result


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
def test_a_compiler_printing_non_utf8_falls_back(tmp_path):
    result = _probe(_fake_compiler(tmp_path, b"#!/bin/sh\nprintf 'cc \\377\\376\\n'\nexit 1\n"))
    assert result["auto_ok"] and result["native"].startswith("Unavailable"), result


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
@needs_kernels
def test_an_unwritable_key_folder_falls_back(tmp_path):
    """The key folder exists but its .lock cannot be opened (a folder there: fails for root
    too; a read-only folder for another user gives PermissionError the same way)."""
    setup = AT_PATH + '(p.parent / ".lock").mkdir()'
    result = _probe({"XDG_CACHE_HOME": str(tmp_path)}, setup)
    assert result["auto_ok"] and result["native"].startswith("Unavailable"), result


@pytest.mark.slow  # each a fresh process (~5 s); test_native.py runs two
def test_a_compiler_that_exits_0_without_output_leaves_no_library(tmp_path):
    """A 'compiler' that claims success but writes nothing: a build failure (fallback,
    right), and no empty library is left for later processes to trip on."""
    env = _fake_compiler(tmp_path, b"#!/bin/sh\necho fake\nexit 0\n")
    result = _probe(env)
    assert result["auto_ok"] and "the C++ build failed" in result["native"]
    assert not list((tmp_path / "cache").rglob("*.so*"))
