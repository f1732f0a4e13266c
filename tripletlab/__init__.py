"""tripletlab: triplet-loss metric learning experiments on TensorFlow 2, configured by Hydra.

The Python API: ``tripletlab.compose(overrides)`` and ``tripletlab.train(cfg, run_dir)``
(see :mod:`tripletlab.api`).
"""

import logging
import os

__version__ = "0.1.0"
__all__ = ["compose", "train", "__version__"]

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter (oneDNN notices,
# absl's pre-init warning, CPU features) out of the user's terminal, unless
# TRIPLETLAB_TF_LOGS=1 asks for it. Users can still set TF_CPP_MIN_LOG_LEVEL themselves.
# (TensorFlow 2.21 prints its oneDNN notice before it reads it: the commands import it
# through tripletlab.runtime.import_tensorflow_quietly.)
if os.environ.get("TRIPLETLAB_TF_LOGS", "").strip().lower() not in ("1", "true", "yes"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# absl's INFO lines ("Sharding callback duration") reach Python logging on every checkpoint.
logging.getLogger("absl").setLevel(logging.WARNING)
# tf.distribute logs every collective it sets up at INFO.
logging.getLogger("tensorflow").setLevel(logging.WARNING)


def __getattr__(name: str):
    # Lazy: `import tripletlab.losses` must not pull in Hydra, and the API imports it.
    if name in ("compose", "train"):
        from tripletlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'tripletlab' has no attribute {name!r}")
