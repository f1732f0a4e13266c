"""Cross-batch memory (XBM, Wang et al., CVPR 2020): a FIFO of the last M embeddings and
labels of earlier steps, mined together with the batch (no gradient flows into it).

It lives in ``tf.Variable`` s that the run's checkpoint holds, so a resumed run mines the
same memory as an uninterrupted one. Under ``tf.distribute`` (several replicas) it holds *global*
batches: it is filled after the all-gather, with the same values on every replica (the
variables take the first replica's write, ``ONLY_FIRST_REPLICA``).
"""

from __future__ import annotations


class CrossBatchMemory:
    """M embeddings [M, D] float32 and labels [M] int64, written in a ring; ``filled`` of
    them hold entries. Create it in the distribution's scope; :meth:`contents` and
    :meth:`enqueue` run inside the train step."""

    def __init__(self, size: int, dim: int, start: int = 0):
        import tensorflow as tf

        if size < 1:
            raise ValueError(f"a cross-batch memory needs size >= 1, got {size}")
        self.size, self.start = int(size), int(start)
        kwargs = {
            "trainable": False,
            "synchronization": tf.VariableSynchronization.ON_WRITE,
            "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA,
        }
        self.embeddings = tf.Variable(tf.zeros([size, dim]), name="memory_embeddings", **kwargs)
        self.labels = tf.Variable(tf.zeros([size], tf.int64), name="memory_labels", **kwargs)
        self.filled = tf.Variable(tf.constant(0, tf.int64), name="memory_filled", **kwargs)
        self.next = tf.Variable(tf.constant(0, tf.int64), name="memory_next", **kwargs)

    def checkpointed(self):
        """The variables as one trackable object, for ``tf.train.Checkpoint(memory=...)``."""
        import tensorflow as tf

        return tf.train.Checkpoint(
            embeddings=self.embeddings, labels=self.labels, filled=self.filled, next=self.next
        )

    def contents(self, step):
        """(labels [m], embeddings [m, D]) to mine at ``step``: the filled entries in slot
        order, none before ``start``."""
        import tensorflow as tf

        used = tf.where(tf.cast(step, tf.int64) >= self.start, self.filled, 0)
        return self.labels[:used], tf.stop_gradient(self.embeddings[:used])

    def enqueue(self, labels, embeddings):
        """Write the global batch (labels [B], embeddings [B, D]) over the oldest entries:
        the last min(B, M) rows, at slots next, next + 1, ... (mod M)."""
        import tensorflow as tf

        keep = min(self.size, 2**31 - 1)
        labels = tf.cast(labels, tf.int64)[-keep:]
        embeddings = tf.stop_gradient(tf.cast(embeddings, tf.float32))[-keep:]
        count = tf.shape(labels, out_type=tf.int64)[0]
        slots = (self.next + tf.range(count)) % self.size
        index = slots[:, None]
        self.embeddings.assign(tf.tensor_scatter_nd_update(self.embeddings, index, embeddings))
        self.labels.assign(tf.tensor_scatter_nd_update(self.labels, index, labels))
        self.next.assign((self.next + count) % self.size)
        self.filled.assign(tf.minimum(self.filled + count, self.size))
