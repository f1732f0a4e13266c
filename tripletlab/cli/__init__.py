"""The console commands, one module each (pyproject.toml ``[project.scripts]``):

- ``tripletlab-train`` (:mod:`.train`): one run, or a sweep with ``-m``; ``python run.py``
- ``tripletlab-sweep`` (:mod:`.sweep`): the models x mining grid; ``./sweep.sh``
- ``tripletlab-evaluate`` (:mod:`.evaluate`): recompute a run's metrics from its folder
- ``tripletlab-visualize`` (:mod:`.visualize`): rebuild a run's projector and plots
- ``tripletlab-embed`` (:mod:`.embed`): embed images, list their nearest neighbours
- ``tripletlab-summarize`` (:mod:`.summarize`): the comparison table of runs and sweeps
- ``tripletlab-fetch`` (:mod:`.fetch`): make sure a dataset's files are present

Each module's ``main(argv=None) -> int`` is its entry point. Config changes are Hydra-style
``key=value`` / ``group=option`` arguments in every command; a user's mistake ends in one
``error: ...`` line and a non-zero exit status (:func:`.common.run_cli`). The logic lives in
the modules these call; nothing here but argument parsing and printing.
"""
