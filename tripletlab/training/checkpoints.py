"""Checkpoints of a run: model, optimizer, the epoch counter and the cross-batch memory;
resume from the latest."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tripletlab.errors import TrainingError

log = logging.getLogger("tripletlab")

MAX_TO_KEEP = 3


class Checkpoints:
    """A ``tf.train.CheckpointManager`` over the model, the optimizer and the epoch done.

    Checkpoint ``n`` holds the state after epoch ``n``. A checkpoint is only written after
    an epoch that finished with finite values, so the latest one is always a good one.
    ``folder`` is where this process saves; ``temporary=True`` (a non-chief worker, which
    must take part in saving) removes it on :meth:`close`. ``memory``: the run's
    cross-batch memory (:class:`~tripletlab.training.memory.CrossBatchMemory`), if any.
    """

    def __init__(self, folder: Path, model, optimizer, temporary: bool = False, memory=None):
        import tensorflow as tf

        self.folder = Path(folder)
        self.temporary = temporary
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        parts = {"model": model, "optimizer": optimizer, "epoch": self.epoch}
        if memory is not None:  # a CrossBatchMemory: resumed runs mine the same memory
            parts["memory"] = memory.checkpointed()
        self._checkpoint = tf.train.Checkpoint(**parts)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, str(self.folder), max_to_keep=MAX_TO_KEEP
        )

    @property
    def latest(self) -> str | None:
        return self._manager.latest_checkpoint

    def restore_latest(self, folder: Path | None = None) -> int:
        """Restore the latest checkpoint of ``folder`` (default: this one's), if any; the
        number of epochs it had done (0 if none). Workers restore from the chief's folder.

        Every saved value must find its variable: a checkpoint from another model is an
        error, not a silent partial restore.
        """
        import tensorflow as tf

        path = tf.train.latest_checkpoint(str(folder or self.folder))
        if not path:
            return 0
        try:
            status = self._checkpoint.restore(path)
            # Checked, then quiet: values of objects this run never creates may remain.
            status.assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError) as err:
            raise TrainingError(
                f"checkpoint {path} does not fit this run's model ({err}); it was written by "
                "another configuration: use a new run folder, or delete its checkpoints/"
            ) from None
        epoch = int(self.epoch.numpy())
        log.info("resuming from %s after epoch %d", path, epoch)
        return epoch

    def save(self, epoch: int) -> str:
        """Save the state after ``epoch``. If writing fails (a full disk), what TensorFlow
        left of this checkpoint is removed; the earlier checkpoints stay as they were."""
        self.epoch.assign(epoch)
        try:
            return self._manager.save(checkpoint_number=epoch)
        except BaseException:
            self._remove_partial(epoch)
            raise

    def _remove_partial(self, epoch: int) -> None:
        if self._manager.latest_checkpoint == str(self.folder / f"ckpt-{epoch}"):
            return  # recorded: it is complete (what failed came after)
        for leftover in self.folder.glob(f"ckpt-{epoch}[._]*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)
