"""The metrics a run reports, and those ``evaluate`` recomputes, against a brute force.

The expected side shares no code with tripletlab's embedding or metric functions: the saved
model is reloaded with Keras (as README says users do), the images are scaled to [0, 1] by
hand, and every metric is a float64 numpy loop over each query's full ranking, written from
the definitions in README ("Metrics are computed on the test split ...").
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import tripletlab
from tests.helpers import TINY

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e

KS = (1, 2, 4, 8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = tripletlab.compose([*TINY, "trainer.epochs=2", "trainer.mixed_precision=off"])
    tripletlab.train(cfg, run_dir)
    return run_dir, cfg


@pytest.fixture(scope="module")
def expected(run):
    """Every metric by brute force from the saved model's embeddings (float64)."""
    import keras

    import tripletlab.models  # noqa: F401  README: registers the custom layer before loading
    from tripletlab.data import load_dataset

    run_dir, cfg = run
    model = keras.models.load_model(run_dir / "model" / "embedding_model.keras")
    data = load_dataset(cfg.dataset)

    def embed(images):
        batch = cfg.eval.batch_size
        parts = [
            np.asarray(model(images[i : i + batch].astype(np.float32) / 255.0, training=False))
            for i in range(0, len(images), batch)
        ]
        return np.concatenate(parts).astype(np.float64)

    test, train = embed(data.x_test), embed(data.x_train)
    return brute_force_metrics(test, data.y_test, train, data.y_train, cfg.eval.knn_k)


def brute_force_metrics(test, y_test, train, y_train, knn_k):
    d = np.sqrt(((test[:, None, :] - test[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)  # leave the query out
    p1, recall, ap = [], {k: [] for k in KS}, []
    for q in range(len(test)):
        relevant = y_test == y_test[q]
        relevant[q] = False
        r = int(relevant.sum())
        if r == 0:  # a lone query has no right answer: left out
            continue
        order = np.argsort(d[q], kind="stable")[: len(test) - 1]
        hits = relevant[order]
        p1.append(hits[0])
        for k in KS:
            recall[k].append(hits[:k].any())
        top = hits[:r]  # MAP@R: precision at each hit among the first R, divided by R
        ap.append(sum(top[: i + 1].sum() / (i + 1) for i in range(r) if top[i]) / r)
    dk = np.sqrt(((test[:, None, :] - train[None, :, :]) ** 2).sum(-1))
    correct = []
    for q in range(len(test)):
        nearest = np.argsort(dk[q], kind="stable")[:knn_k]
        labels = y_train[nearest]
        counts = {c: int((labels == c).sum()) for c in labels}
        most = max(counts.values())
        # A tie between classes goes to the tied class whose member ranks first.
        winner = next(c for c in labels if counts[c] == most)
        correct.append(winner == y_test[q])
    return {
        "precision_at_1": float(np.mean(p1)),
        **{f"recall_at_{k}": float(np.mean(recall[k])) for k in KS},
        "map_at_r": float(np.mean(ap)),
        "knn_accuracy": float(np.mean(correct)),
        "_queries": len(test),
    }


def assert_metrics_match(got: dict, want: dict):
    # Equal up to rounding: one query changing its answer would move a metric by 1/N (here
    # 1/359), which is also what an off-by-one k or a wrong tie rule does, so no slack for
    # that. (A float32 near-tie could in principle flip a query; 8-d embeddings of 359
    # images have none.)
    for key, value in want.items():
        if not key.startswith("_"):
            assert got[key] == pytest.approx(value, abs=1e-6), key


def test_trained_run_reports_the_brute_force_metrics(run, expected):
    run_dir, _ = run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert_metrics_match(summary["metrics"], expected)
    assert 0.3 < expected["precision_at_1"] < 1.0  # a trained model, not a degenerate one


def test_evaluate_reproduces_the_brute_force_metrics(run, expected):
    from tripletlab.reuse.evaluate import evaluate_run

    run_dir, _ = run
    records = {n: (run_dir / n).read_bytes() for n in ("metrics.csv", "summary.json")}
    result = evaluate_run(run_dir)
    assert result["dataset"]["queries"] == expected["_queries"]
    assert_metrics_match(result["metrics"], expected)
    written = json.loads((run_dir / "eval" / "digits-test.json").read_text())
    assert written["metrics"] == result["metrics"]
    # Training's own records stay as training left them.
    assert {n: (run_dir / n).read_bytes() for n in records} == records
