"""Checkpoints of a run: model, optimizer, the epoch counter, the cross-batch memory and
the metrics rows so far; resume from the latest.

An epoch is committed when ``tf.train.CheckpointManager`` renames its index file
``checkpoints/checkpoint`` onto the new checkpoint: the weights and the epoch's metrics row
(with every earlier row) are in that one checkpoint, so they become durable together, and
the metrics file is rebuilt from them on resume (:mod:`.loop`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from tripletlab.errors import TrainingError

log = logging.getLogger("tripletlab")

MAX_TO_KEEP = 3


ROWS_KEY = "rows"


def _rows_state():
    """A ``tf.train.experimental.PythonState`` holding the metrics rows as JSON: saved as a
    string tensor in the checkpoint itself (host memory, whatever the distribution)."""
    import tensorflow as tf

    class Rows(tf.train.experimental.PythonState):
        def __init__(self):
            self.rows: list[dict] | None = None

        def serialize(self) -> str:
            return json.dumps(self.rows or [], default=_plain)

        def deserialize(self, string_value) -> None:
            text = string_value.decode() if isinstance(string_value, bytes) else string_value
            self.rows = json.loads(text)

    return Rows()


def _plain(value):
    """numpy scalars (a metric computed with numpy) as Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else str(value)


def saved_rows(folder: Path) -> list[dict] | None:
    """The metrics rows in the latest checkpoint of ``folder``, read without building the
    model; None when there is none, or it predates the rows."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(str(folder))
    key = f"{ROWS_KEY}/.ATTRIBUTES/py_state"
    if not path or not (reader := tf.train.load_checkpoint(path)).has_tensor(key):
        return None
    value = reader.get_tensor(key)
    return json.loads(value.decode() if isinstance(value, bytes) else str(value))


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
        self._rows = _rows_state()
        parts = {"model": model, "optimizer": optimizer, "epoch": self.epoch}
        if memory is not None:  # a CrossBatchMemory: resumed runs mine the same memory
            parts["memory"] = memory.checkpointed()
        self._parts = parts
        self._checkpoint = tf.train.Checkpoint(**parts, **{ROWS_KEY: self._rows})
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, str(self.folder), max_to_keep=MAX_TO_KEEP
        )

    @property
    def latest(self) -> str | None:
        return self._manager.latest_checkpoint

    @property
    def rows(self) -> list[dict] | None:
        """The metrics rows of the restored checkpoint (epochs 1..n, as they were when it
        was saved); None when nothing was restored or the checkpoint predates them."""
        return self._rows.rows

    def restore_latest(self, folder: Path | None = None) -> int:
        """Restore the latest checkpoint of ``folder`` (default: this one's), if any; the
        number of epochs it had done (0 if none). Workers restore from the chief's folder.

        Every saved value must find its variable: a checkpoint from another model is an
        error, not a silent partial restore.
        """
        import tensorflow as tf

        path = tf.train.latest_checkpoint(str(folder or self.folder))
        if not folder or Path(folder) == self.folder:
            self._remove_uncommitted(path)
        if not path:
            return 0
        names = {name for name, _ in tf.train.list_variables(path)}
        # A checkpoint written before the rows travelled in it restores without them.
        with_rows = any(n.startswith(f"{ROWS_KEY}/") for n in names)
        target = self._checkpoint if with_rows else tf.train.Checkpoint(**self._parts)
        try:
            status = target.restore(path)
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

    def save(self, epoch: int, rows: list[dict]) -> str:
        """Save the state after ``epoch`` with the metrics ``rows`` of epochs 1..epoch. If
        writing fails (a full disk), what TensorFlow left of this checkpoint is removed; the
        earlier checkpoints stay as they were."""
        self.epoch.assign(epoch)
        self._rows.rows = list(rows)
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

    def _remove_uncommitted(self, latest: str | None) -> None:
        """Files of checkpoints after ``latest`` (a save killed before its commit): never
        restored, and in the way of the epoch's next save."""
        if latest is None:  # nothing committed, or an index naming lost files: touch nothing
            return
        done = int(latest.rsplit("-", 1)[1])
        for leftover in self.folder.glob("ckpt-*"):
            match = re.match(r"ckpt-(\d+)[._]", leftover.name)
            if match and int(match.group(1)) > done:
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)
