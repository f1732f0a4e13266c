"""Evaluate a trained run again, from its folder: ``tripletlab-evaluate RUN_DIR``.

The config comes from the run's ``.hydra/config.yaml``; overrides change it for this
evaluation only (``dataset=image_folder dataset.root=/my/images``, ``dataset.max_test=500``).
Every metric is recomputed with the saved model on the test split (or ``--split train``),
printed as a table and written to ``RUN_DIR/eval/<name>.json``. The run's own metrics and
summary stay as training left them.

On the run's own data this reproduces the run's final metrics exactly: the images, their
preprocessing, the batch size (``eval.batch_size``), the compiled embedding step and the
metric function (``eval.knn_k``, ``eval.chunk_size``) are the ones training used.

With ``--split train`` the training split is both queries and gallery (leave-one-out) and
``knn_accuracy`` is not computed: every image would find itself.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from tripletlab.errors import ConfigError
from tripletlab.inference import SPLITS, evaluate_split, open_model
from tripletlab.reuse import run_config

log = logging.getLogger("tripletlab")

_NAME_RE = re.compile(r"[A-Za-z0-9._=,+-]+")
_MAX_NAME = 100


def default_name(dataset: str, split: str, overrides: Sequence[str]) -> str:
    """``<dataset>-<split>`` plus the overrides, made safe as a file name."""
    name = f"{dataset}-{split}"
    if overrides:
        name += "-" + re.sub(r"[^A-Za-z0-9._=,+-]+", "_", ",".join(overrides)).strip("_")
    if len(name) > _MAX_NAME:  # keep it a valid, still unique, file name
        digest = hashlib.sha1(",".join(overrides).encode()).hexdigest()[:8]
        name = f"{name[: _MAX_NAME - 9]}-{digest}"
    return name


def _check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"--name {name!r} is not a valid file name: use letters, digits and . _ - = , +"
        )
    return name


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    split: str = "test",
    name: str | None = None,
) -> dict:
    """Recompute the metrics of the run in ``run_dir``; write and return eval/<name>.json."""
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not valid; choose one of: test, train")
    run_cfg = run_config.load_config(run_dir, overrides)
    cfg, folder = run_cfg.cfg, run_cfg.folder
    name = _check_name(name) if name else default_name(cfg.dataset.name, split, overrides)
    folder.require_model()  # a clear error before TensorFlow is imported
    from tripletlab.config import to_container
    from tripletlab.io_utils import atomic_write_json
    from tripletlab.metrics import retrieval_metrics

    embedder = open_model(folder, cfg)
    data = run_config.load_data(run_cfg, embedder.input_shape)

    t0 = time.perf_counter()
    if split == "test":
        # The very function training calls at the end of each evaluated epoch.
        metrics, test_emb, train_emb = evaluate_split(embedder.embed, data, cfg.eval)
        queries, gallery = len(test_emb), len(train_emb)
    else:
        train_emb = embedder.embed(data.x_train)
        metrics = retrieval_metrics(train_emb, data.y_train, chunk_size=cfg.eval.chunk_size)
        queries, gallery = len(train_emb), 0
    seconds = time.perf_counter() - t0

    same_data = split == "test" and not overrides
    training = (folder.read_summary().get("metrics") or {}) if same_data else {}
    result = {
        "run_dir": str(folder.path.resolve()),
        "name": name,
        "split": split,
        "overrides": list(overrides),
        "dataset": {
            "name": data.name,
            "source": data.source,
            "queries": queries,
            "knn_gallery": gallery,
            "image_shape": list(embedder.input_shape),
        },
        "metrics": {k: float(v) for k, v in metrics.items()},
        "training_metrics": {k: training.get(k) for k in metrics} if training else None,
        "eval_seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": to_container(cfg),
    }
    path = atomic_write_json(folder.eval_path(name), result)
    result["path"] = str(path)
    return result
