"""A tripletlab plugin: ``mining=random_hard``, ``model=mlp``, ``dataset=npz``,
``logger=jsonl``. Each module is one option; none imports TensorFlow at import time (the
config is composed without it), the code imports it when a run calls it."""
