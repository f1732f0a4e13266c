"""trainer.resume=auto resumes a run only with the config it was started with, apart from
an explicit allow-list (config.RESUME_NEUTRAL_KEYS), reviewed here: adding a key to it
means changing EXPECTED_NEUTRAL below, on purpose.

Checked by behaviour: one real run, then a rerun into its folder for each key of the
composed config outside the allow-list, with that key changed, which must be refused (and
name the key); a rerun that changes only neutral keys resumes."""

from __future__ import annotations

import pytest

import tripletlab
from tests.helpers import TINY
from tripletlab.config import RESUME_NEUTRAL_KEYS
from tripletlab.run_folder import RunConfigMismatch

pytestmark = pytest.mark.e2e

# The keys a rerun may change and still resume: running longer, how it reports, how often
# it checkpoints and evaluates, where it logs, and the resume mode itself.
EXPECTED_NEUTRAL = {
    "trainer.epochs",
    "trainer.progress",
    "trainer.threads",
    "trainer.checkpoint_every",
    "trainer.resume",
    "eval",
    "logger",
    "optimized_metric",
}

# Every other leaf of the composed TINY config, with a changed value (an override).
CHANGED = {
    "dataset.name": "dataset=fashion_mnist",
    "dataset.image_size": "dataset.image_size=10",
    "dataset.channels": "dataset.channels=3",
    "dataset.split_seed": "dataset.split_seed=1",
    "dataset.max_train": "dataset.max_train=500",
    "dataset.max_test": "dataset.max_test=200",
    "dataset.split": "dataset.split=classes",
    "dataset.train_classes": "dataset.split=classes dataset.train_classes=[0,1,2,3,4,5]",
    "dataset.val_classes": "dataset.split=classes dataset.val_classes=2",
    "dataset.test_fraction": "dataset.test_fraction=0.3",
    "model.name": "model=vgg_gap",
    "model.embedding_size": "model.embedding_size=6",
    "model.l2_normalize": "model.l2_normalize=false",
    "model.num_channels": "model.num_channels=6",
    "model.batch_norm": "model.batch_norm=false",
    "mining.strategy": "mining=batch_hard",
    "mining.margin": "mining.margin=0.3",
    "mining.squared": "mining.squared=true",
    "mining.soft_margin": "mining.soft_margin=true",
    "mining.memory_size": "mining.memory_size=64",
    "mining.memory_start": "mining.memory_start=3",
    "sampler.name": "sampler=random",
    "sampler.classes_per_batch": "sampler.classes_per_batch=5",
    "sampler.images_per_class": "sampler.images_per_class=3",
    "trainer.batch_size": "trainer.batch_size=32",
    "trainer.learning_rate": "trainer.learning_rate=0.002",
    "trainer.warmup_epochs": "trainer.warmup_epochs=0.5",
    "trainer.schedule": "trainer.schedule=constant",
    "trainer.weight_decay": "trainer.weight_decay=0.0001",
    "trainer.augment": "trainer.augment=flip_translate",
    "trainer.jit_compile": "trainer.jit_compile=false",
    "trainer.mixed_precision": "trainer.mixed_precision=off",
    "trainer.deterministic": "trainer.deterministic=true",
    "trainer.steps_per_epoch": "trainer.steps_per_epoch=3",
    "trainer.collapse_patience": "trainer.collapse_patience=3",
    "distribute.name": "distribute=mirrored distribute.cpu_devices=2",
    "distribute.cpu_devices": "distribute.cpu_devices=2",
    "seed": "seed=7",
}


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


def _neutral(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in RESUME_NEUTRAL_KEYS)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    tripletlab.train(
        tripletlab.compose([*TINY, "dataset.max_train=256", "trainer.steps_per_epoch=2"]), run_dir
    )
    return run_dir


def test_the_resume_neutral_keys_are_the_reviewed_allow_list():
    assert set(RESUME_NEUTRAL_KEYS) == EXPECTED_NEUTRAL
    assert len(RESUME_NEUTRAL_KEYS) == len(EXPECTED_NEUTRAL)  # no duplicates


def test_every_other_key_of_the_config_is_checked_below():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(tripletlab.compose(TINY), resolve=True)
    keys = {k for k in _leaves(cfg) if not _neutral(k)}
    assert keys == set(CHANGED)


@pytest.mark.parametrize("key", sorted(CHANGED))
def test_a_rerun_that_changes_a_training_key_is_refused(run, key):
    # sampler=random has no P and K: TINY's sampler keys go with the change.
    base = [o for o in TINY if key != "sampler.name" or not o.startswith("sampler.")]
    overrides = [*base, "dataset.max_train=256", "trainer.steps_per_epoch=2", *CHANGED[key].split()]
    before = (run / "metrics.csv").read_text()
    with pytest.raises(RunConfigMismatch, match="would mix two experiments") as info:
        tripletlab.train(tripletlab.compose(overrides), run)
    assert f"{key}:" in str(info.value)
    assert (run / "metrics.csv").read_text() == before


def test_a_rerun_that_changes_only_neutral_keys_resumes(run, tmp_path):
    import shutil

    run = shutil.copytree(run, tmp_path / "run")
    neutral = [
        "trainer.epochs=2",
        "trainer.progress=bar",
        "trainer.threads=1",
        "trainer.checkpoint_every=2",
        "eval.every=2",
        "optimized_metric=map_at_r",
    ]
    tripletlab.train(
        tripletlab.compose([*TINY, "dataset.max_train=256", "trainer.steps_per_epoch=2", *neutral]),
        run,
    )
    lines = (run / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]
