"""tripletlab: triplet-loss metric learning experiments on TensorFlow 2, configured by Hydra."""

import logging
import os

__version__ = "0.1.0"

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter (oneDNN notices,
# absl's pre-init warning) out of the user's terminal. Users can still set it themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# absl's INFO lines ("Sharding callback duration") reach Python logging on every checkpoint.
logging.getLogger("absl").setLevel(logging.WARNING)
