"""Benchmarks, run as ``python -m tripletlab.bench <command>`` (see ``__main__``)."""
