"""training/callbacks.py: the one fan-out of the loop's hooks; trackers are added guarded."""

from __future__ import annotations

import logging

import pytest

from tripletlab.training.callbacks import Callbacks


class Recorder:
    def __init__(self, fail_on: str | None = None):
        self.calls, self.fail_on = [], fail_on

    def on_epoch_end(self, row):
        self.calls.append(("epoch", dict(row)))
        if self.fail_on == "epoch":
            raise OSError("disk full")

    def on_train_end(self, summary):
        self.calls.append(("end", dict(summary)))


def test_hooks_reach_every_callback_that_has_them_in_order():
    first, second = Recorder(), Recorder()
    callbacks = Callbacks([first])
    callbacks.extend([second], guarded=True)
    callbacks.on_train_begin()  # neither has it: skipped
    callbacks.on_epoch_end({"epoch": 1})
    callbacks.on_train_end({"status": "finished"})
    assert first.calls == second.calls == [("epoch", {"epoch": 1}), ("end", {"status": "finished"})]
    assert callbacks.items == [first, second]


def test_a_guarded_tracker_that_fails_is_a_warning_and_is_switched_off(caplog):
    broken, plain = Recorder(fail_on="epoch"), Recorder()
    callbacks = Callbacks([plain])
    callbacks.extend([broken], guarded=True)
    with caplog.at_level(logging.WARNING, logger="tripletlab"):
        callbacks.on_epoch_end({"epoch": 1})
        callbacks.on_epoch_end({"epoch": 2})
        callbacks.on_train_end({"status": "finished"})
    assert broken.calls == [("epoch", {"epoch": 1})]  # off after its first error
    assert len(plain.calls) == 3
    (record,) = caplog.records
    assert record.getMessage() == (
        "Recorder failed (OSError: disk full); the run goes on without it"
    )


def test_an_unguarded_callback_error_propagates():
    callbacks = Callbacks([Recorder(fail_on="epoch")])
    with pytest.raises(OSError, match="disk full"):
        callbacks.on_epoch_end({"epoch": 1})
