"""Reusing a finished run: its config with new overrides (:mod:`.run_config`), and the
commands built on it: evaluate (:mod:`.evaluate`), rebuild the projector and plots
(:mod:`.visualize`), embed new images and find their neighbours (:mod:`.embed`).

Nothing here imports the training loop; embedding and evaluating are
:mod:`tripletlab.inference`'s, shared with training.
"""

from tripletlab.reuse.run_config import RunConfig, load_config

__all__ = ["RunConfig", "load_config"]
