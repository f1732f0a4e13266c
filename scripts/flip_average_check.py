"""precision@1 and MAP@R of a finished Fashion-MNIST run's model on the test split (leave-one-out,
as evaluation does), with three embeddings of each image: its own, the L2-normalised sum of its
and its mirror image's (flip-averaged), and the two concatenated. A diagnostic for
results/fmnist_recipe_attempts.md (round 3), not a feature: training and evaluation use the
plain embedding.

    .venv/bin/python scripts/flip_average_check.py RUN_DIR [IDX_FOLDER]
"""

from __future__ import annotations

import gzip
import sys

import numpy as np


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main(run_dir: str, root: str = "/usr/share/datasets/fashion-mnist") -> None:
    import keras

    import tripletlab.models  # noqa: F401  registers the model's custom layers
    from tripletlab.metrics import retrieval_metrics

    images = read_idx(f"{root}/t10k-images-idx3-ubyte.gz")[..., None].astype(np.float32) / 255
    labels = read_idx(f"{root}/t10k-labels-idx1-ubyte.gz").astype(np.int32)
    model = keras.models.load_model(f"{run_dir}/model/embedding_model.keras")
    own = model.predict(images, batch_size=1000, verbose=0).astype(np.float32)
    mirror = model.predict(images[:, :, ::-1], batch_size=1000, verbose=0).astype(np.float32)
    averaged = own + mirror
    averaged /= np.linalg.norm(averaged, axis=1, keepdims=True)
    for name, emb in (
        ("own", own),
        ("flip-averaged", averaged),
        ("concatenated", np.hstack([own, mirror])),
    ):
        m = retrieval_metrics(emb, labels)
        print(f"{name}: precision@1 {m['precision_at_1']:.4f}, MAP@R {m['map_at_r']:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
