"""The cross-batch memory as a FIFO, on its own (eager and in a tf.function): it keeps
exactly the last M entries, overwrites the oldest first, never hands out a slot nobody wrote,
and survives a checkpoint round trip. (In training: test_memory.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from tripletlab.training.memory import CrossBatchMemory


def _batch(first: int, count: int, dim: int = 3):
    """Entries first, first + 1, ...: label i, embedding (i, i + 0.5, ...)."""
    ids = np.arange(first, first + count)
    return ids, (ids[:, None] + np.arange(dim) / 2).astype(np.float32)


class Ring:
    """The FIFO the memory must be, in plain Python: M slots, each batch's last min(B, M)
    entries written at the next slots (mod M), so the oldest entry is overwritten first."""

    def __init__(self, size):
        self.slots, self.next = [None] * size, 0

    def write(self, ids):
        for i in ids[-len(self.slots) :]:
            self.slots[self.next] = i
            self.next = (self.next + 1) % len(self.slots)

    def held(self):
        return [i for i in self.slots if i is not None]


def _check(memory, ring):
    """The memory holds what the ring does, slot by slot, each entry with its embedding,
    and nothing else (no slot that was never written)."""
    labels, embeddings = memory.contents(10**6)
    held = np.array(ring.held(), np.int64)
    np.testing.assert_array_equal(labels.numpy(), held)
    want = (held[:, None] + np.arange(3) / 2).astype("f4")
    np.testing.assert_array_equal(embeddings.numpy(), want)


@pytest.mark.parametrize("compiled", [False, True])
def test_more_batches_than_the_memory_holds_keep_exactly_the_last_m(compiled):
    import tensorflow as tf

    memory = CrossBatchMemory(size=10, dim=3)
    enqueue = tf.function(memory.enqueue) if compiled else memory.enqueue
    ring, written = Ring(10), 0
    for count in (4, 4, 4, 3, 7, 1, 10):  # wraps around, ends on a full-size batch
        labels, embeddings = _batch(written + 1, count)
        enqueue(tf.constant(labels), tf.constant(embeddings))
        ring.write(list(labels))
        written += count
        _check(memory, ring)
        # the last min(written, M) entries, each once
        assert sorted(ring.held()) == list(range(max(1, written - 9), written + 1))
    assert int(memory.filled.numpy()) == 10


def test_a_batch_larger_than_the_memory_keeps_its_last_m_rows():
    import tensorflow as tf

    memory, ring = CrossBatchMemory(size=4, dim=3), Ring(4)
    for first, count in ((1, 2), (3, 9)):  # entries 3..11 of the second: 8..11 stay
        labels, embeddings = _batch(first, count)
        memory.enqueue(tf.constant(labels), tf.constant(embeddings))
        ring.write(list(labels))
    _check(memory, ring)
    assert sorted(ring.held()) == [8, 9, 10, 11]


def test_no_entries_before_the_start_step_and_none_unwritten():
    import tensorflow as tf

    memory = CrossBatchMemory(size=6, dim=3, start=5)
    labels, embeddings = memory.contents(0)
    assert labels.shape == (0,) and embeddings.shape == (0, 3)
    memory.enqueue(*(tf.constant(x) for x in _batch(1, 2)))
    assert memory.contents(4)[0].shape == (0,)  # still before the start
    assert memory.contents(5)[0].numpy().tolist() == [1, 2]  # the written two, no zeros
    assert memory.contents(6)[1].shape == (2, 3)


def test_a_restored_memory_holds_and_continues_what_was_saved(tmp_path):
    import tensorflow as tf

    memory, ring = CrossBatchMemory(size=5, dim=3), Ring(5)
    memory.enqueue(*(tf.constant(x) for x in _batch(1, 7)))
    ring.write(list(range(1, 8)))
    path = tf.train.Checkpoint(memory=memory.checkpointed()).save(str(tmp_path / "ckpt"))
    restored = CrossBatchMemory(size=5, dim=3)
    tf.train.Checkpoint(memory=restored.checkpointed()).restore(path).assert_consumed()
    _check(restored, ring)
    ring.write([8, 9])
    for mem in (memory, restored):  # both continue at the same slot
        mem.enqueue(*(tf.constant(x) for x in _batch(8, 2)))
        _check(mem, ring)


def test_an_empty_memory_is_refused():
    with pytest.raises(ValueError, match="size >= 1"):
        CrossBatchMemory(size=0, dim=3)
