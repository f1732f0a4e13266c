"""Reusing a trained run from its folder: evaluate, embed (and search), bad input.

One tiny digits run (module-scoped) serves every test; the functions are called directly.
Their command lines (tripletlab-evaluate, -visualize, -embed) are tested in tests/cli/test_commands.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, TINY, write_digit_gallery
from tripletlab.errors import ConfigError, DataError
from tripletlab.reuse import embed, evaluate, inputs, run_config

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e

# Class folders of the gallery; its images are digits test images, so the run's own test
# split contains them.
GALLERY_CLASSES = ["0", "1", "2", "3"]
PER_CLASS = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One real run through run.py, as a user starts it (1 epoch on digits)."""
    out = tmp_path_factory.mktemp("run")
    proc = subprocess.run(
        [sys.executable, "run.py", *TINY, f"hydra.run.dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def digits(run_dir):
    """The run's data, as training loaded it."""
    from tripletlab.data import load_dataset

    return load_dataset(run_config.load_config(run_dir).cfg.dataset)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, digits):
    """Digits as PNGs in class sub-folders, in other sizes and channels than the model's."""
    return write_digit_gallery(
        tmp_path_factory.mktemp("gallery"), digits, GALLERY_CLASSES, PER_CLASS
    )


# --------------------------------------------------------------------------- evaluate


def test_evaluate_on_another_dataset_through_a_group_override(run_dir, gallery):
    result = evaluate.evaluate_run(run_dir, ["dataset=image_folder", f"dataset.root={gallery}"])
    ds = result["config"]["dataset"]
    # conf/dataset/image_folder.yaml was composed, then sized for the model (8x8 grey).
    assert ds["name"] == "image_folder" and ds["root"] == str(gallery)
    assert (ds["image_size"], ds["channels"], ds["test_fraction"]) == (8, 1, 0.2)
    assert result["dataset"]["queries"] + result["dataset"]["knn_gallery"] == 20
    assert result["training_metrics"] is None  # other data: nothing to compare with
    assert set(result["metrics"]) >= {"precision_at_1", "map_at_r", "knn_accuracy"}
    path = run_dir / "eval" / "image_folder-test-dataset=image_folder,dataset.root=_"
    assert result["path"].startswith(str(path))


def test_load_config_applies_overrides_to_the_saved_config(run_dir):
    rc = run_config.load_config(run_dir, ["eval.knn_k=3", "model=lenet"])
    assert rc.cfg.eval.knn_k == 3 and rc.cfg.model.name == "lenet"
    assert rc.cfg.dataset.name == "digits" and rc.cfg.sampler.classes_per_batch == 4
    assert rc.changed_groups == {"model"} and not rc.dataset_changed
    with pytest.raises(ConfigError, match="trainer.epoch"):
        run_config.load_config(run_dir, ["trainer.epoch=3"])
    with pytest.raises(ConfigError, match="dataset/bogus"):
        run_config.load_config(run_dir, ["dataset=bogus"])


# --------------------------------------------------------------------------- embed


def test_embed_tsv_and_neighbours_in_the_training_split(run_dir, gallery, tmp_path):
    files = sorted((gallery / "1").glob("*.png"))[:2]
    result = embed.embed_inputs(run_dir, files, tmp_path / "e.tsv", neighbours=2)
    lines = (tmp_path / "e.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["path"] + [f"e{i}" for i in range(8)]
    assert [line.split("\t")[0] for line in lines[1:]] == [str(p) for p in files]
    values = np.array([line.split("\t")[1:] for line in lines[1:]], dtype=np.float64)
    np.testing.assert_allclose(values, result["embeddings"], rtol=1e-6)
    assert result["gallery_size"] == 1438 and "digits training split" in result["gallery"]
    assert all(row[2].startswith("train[") for row in result["table"])
    assert all(row[3] in [str(i) for i in range(10)] for row in result["table"])
    assert (tmp_path / "e.neighbours.tsv").is_file()
    assert (tmp_path / "e.neighbours.png").is_file()


# --------------------------------------------------------------------------- bad input


def test_errors_are_tripletlab_errors(run_dir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        inputs.find_images([tmp_path / "nothing.png"])
    with pytest.raises(ConfigError, match="--gallery needs --neighbours"):
        embed.embed_inputs(run_dir, [tmp_path], tmp_path / "e.npy", gallery_dir=tmp_path)
