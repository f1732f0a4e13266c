"""tripletlab: triplet-loss metric learning experiments on TensorFlow 2, configured by Hydra."""

__version__ = "0.1.0"
