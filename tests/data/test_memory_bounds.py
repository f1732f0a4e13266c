"""Memory bounded by the settings: in-memory images decoded into one array that TensorFlow
shares, ``dataset.stream=auto`` deciding on the in-memory path's real peak, and a process
whose peak stays near the decoded size. (Batches and buffers: test_pipeline.py and
test_inference.py; whole runs: ``python -m tripletlab.bench data --memory``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, write_image
from tripletlab.data import images, images_from_files, in_memory_peak_bytes, load_dataset
from tripletlab.data.pipeline import TENSOR_ALIGNMENT
from tripletlab.errors import DataError
from tripletlab.options.dataset import ImageFolderConfig


def _grey_then_colour(tmp_path):
    """Two grey images, then one colour image, then a grey one: [4, 4, 4, 3] expected."""
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (4, 4), dtype=np.uint8),
        rng.integers(0, 256, (4, 4), dtype=np.uint8),
        rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
        rng.integers(0, 256, (4, 4), dtype=np.uint8),
    ]
    paths = []
    for i, array in enumerate(arrays):
        paths.append(tmp_path / f"{i}.png")
        write_image(paths[-1], array)
    rgb = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1) for a in arrays]
    return paths, np.stack(rgb)


def test_in_memory_splits_are_views_of_one_aligned_array(tmp_path):
    paths, expected = _grey_then_colour(tmp_path)
    train, test = images_from_files([paths[:3], paths[3:]], None, None, stream="false")
    # Grey images before the first colour one became RGB (each grey value on 3 channels).
    np.testing.assert_array_equal(np.concatenate([train, test]), expected)
    assert train.base is not None and train.base is test.base  # one array, no stack of parts
    assert train.ctypes.data % TENSOR_ALIGNMENT == 0  # TensorFlow can share it as it is
    grey, _ = images_from_files([paths[:2], paths[3:]], None, None, stream="false")
    assert grey.shape == (2, 4, 4, 1)  # no colour image: one channel


def test_in_memory_images_of_different_sizes_name_two_files(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "b.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DataError, match=r"a.png is 4x4 but .*b.png is 4x5.*image_size"):
        images_from_files([[tmp_path / "a.png", tmp_path / "b.png"]], None, None, "false")


def test_auto_streams_when_the_in_memory_peak_would_pass_the_limit(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    for c in "ab":
        for i in range(6):
            write_image(root / c / f"{i}.png", np.full((8, 8, 3), 9 * i, np.uint8))
    decoded = 12 * 8 * 8 * 3
    # The in-memory path costs the decoded array once (not 3x, as when it was stacked from
    # a list and copied by tf.constant); channels unknown: RGB, and grey-then-colour's copy.
    assert in_memory_peak_bytes(12, 8, 3) == decoded
    assert in_memory_peak_bytes(12, 8, None) == decoded * 4 // 3
    rgb = ImageFolderConfig(root=str(root), image_size=8, channels=3)
    either = ImageFolderConfig(root=str(root), image_size=8, channels=None)
    monkeypatch.setattr(images, "STREAM_ABOVE_BYTES", decoded)
    assert not load_dataset(rgb).streamed  # fits exactly
    assert load_dataset(either).streamed  # the possible RGB copy does not
    monkeypatch.setattr(images, "STREAM_ABOVE_BYTES", decoded - 1)
    assert load_dataset(rgb).streamed


@pytest.mark.slow  # a fresh TensorFlow process: 20-35 s
def test_an_in_memory_split_costs_its_decoded_size_once():
    """A fresh process trains 3 batches on, then embeds, a 490 MB in-memory split: its peak
    stays within a quarter of the split above what it held with the split filled in (a copy
    of the split, by tf.constant, tf.data's graph rewrites or from_tensor_slices, would add
    the whole of it again)."""
    script = ROOT / "tests" / "scripts" / "in_memory_peak.py"
    done = subprocess.run(
        [sys.executable, str(script), "40000"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    added = result["peak_rss"] - result["filled_rss"]
    assert added < 0.25 * result["array_bytes"], f"{added / 2**20:.0f} MB above the split"
