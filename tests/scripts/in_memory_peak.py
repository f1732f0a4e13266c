"""Run by tests/data/test_memory_bounds.py in a fresh process, so that its peak RSS is its own.

``python in_memory_peak.py N`` makes an in-memory split of N 64x64 RGB images (uint8, as
the loader leaves it: one aligned array), trains 3 steps of the real TrainPipeline on it
and embeds it whole with embed_images, and prints JSON: the array's bytes, the resident
memory once it is filled (TensorFlow already warmed up on a tiny split), and the peak.
"""

import json
import resource
import sys
from pathlib import Path

import numpy as np


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def exercise(images: np.ndarray, labels: np.ndarray) -> None:
    """Three training batches, then every image embedded (mean and max per image)."""
    import tensorflow as tf
    from omegaconf import OmegaConf

    from tripletlab.data.pipeline import TrainPipeline
    from tripletlab.inference import embed_images

    sampler = OmegaConf.create({"name": "random"})
    pipe = TrainPipeline(images, labels, sampler, 64, seed=0, max_steps=3)
    for batch, _ in pipe.epoch(1):
        float(tf.reduce_sum(batch))

    def embed_step(x):
        return tf.stack([tf.reduce_mean(x, [1, 2, 3]), tf.reduce_max(x, [1, 2, 3])], axis=1)

    out = embed_images(embed_step, images, 64, 2)
    assert out.shape == (len(images), 2)


def main(count: int) -> None:
    from tripletlab.data import aligned_empty

    warm = aligned_empty((256, 64, 64, 3))
    warm[...] = 7
    exercise(warm, np.arange(256) % 8)  # TensorFlow's runtime, threads and traces
    images = aligned_empty((count, 64, 64, 3))
    images[...] = np.arange(count, dtype=np.uint8)[:, None, None, None]
    filled = rss_bytes()
    exercise(images, np.arange(count) % 100)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"array_bytes": images.nbytes, "filled_rss": filled, "peak_rss": peak}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
