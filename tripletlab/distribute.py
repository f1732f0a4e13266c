"""Replicas (``distribute=none|mirrored|multi_worker``, tf.distribute) and mining over the
global batch.

"Distribution" names a ``tf.distribute.Strategy`` here: "strategy" is the mining one.

With plain data parallelism each replica would mine only its own slice of the batch: a
batch-hard anchor would see B/N candidates, and the loss would not be the one the config
names. :func:`global_batch_loss` all-gathers every replica's embeddings and labels and
computes the configured loss over the whole global batch, as pytorch-metric-learning's
``DistributedLossWrapper`` does.

Gradients: every replica computes the same global loss L. The gradient of an all-gather
sums the upstream gradients of all replicas (N identical copies) before slicing out the
replica's own rows, and the optimizer sums the replicas' weight gradients. Dividing the
loss by N for the backward pass therefore gives exactly dL/dW, the single-device gradient
of the same loss on the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from tripletlab.errors import ConfigError, TripletLabError, one_line
from tripletlab.registry import DISTRIBUTIONS

log = logging.getLogger("tripletlab")


def configure_cpu_devices(count: int) -> list[str]:
    """Split the CPU into ``count`` logical devices; their names (["/cpu:0", ...]).

    Must run before TensorFlow initialises its devices. If it already did, the logical
    CPUs that exist are used when there are enough of them; otherwise a clear error.
    """
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    with contextlib.suppress(RuntimeError):  # already initialised: checked below
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < count:
        raise ConfigError(
            f"distribute.cpu_devices={count}, but TensorFlow was already started in this "
            f"process with {len(logical)} CPU device(s); start a new process"
        )
    return [d.name for d in logical[:count]]


def uses_logical_cpus(distribution) -> bool:
    """Whether ``distribution`` runs several replicas on CPU devices of this one process."""
    if distribution.num_replicas_in_sync == 1:
        return False
    try:
        devices = distribution.extended.worker_devices
    except RuntimeError:  # the default distribution has none
        return False
    return len(devices) > 1 and all("CPU" in d.upper() for d in devices)


def cluster_resolver(environ: dict[str, str] | None = None):
    """The multi-worker cluster: from ``TF_CONFIG``, else from Slurm; ConfigError if neither."""
    import tensorflow as tf

    env = os.environ if environ is None else environ
    if env.get("TF_CONFIG"):
        try:
            spec = json.loads(env["TF_CONFIG"])
        except ValueError as err:
            raise ConfigError(f"TF_CONFIG is not valid JSON: {err}") from None
        if not isinstance(spec, dict) or not spec.get("cluster") or not spec.get("task"):
            raise ConfigError(
                'TF_CONFIG needs "cluster" and "task", e.g. {"cluster": {"worker": '
                '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
            )
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if env.get("SLURM_JOB_ID") and env.get("SLURM_PROCID") is not None:
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=int(env.get("TRIPLETLAB_PORT_BASE", "8888"))
        )
    raise ConfigError(
        "distribute=multi_worker needs a cluster: set TF_CONFIG on every worker (see README, "
        '"Several GPUs and hosts") or launch under Slurm (hydra/launcher=slurm_multinode); '
        "on one machine use distribute=mirrored"
    )


def make_distribution(distribute_cfg: Any):
    """The ``tf.distribute.Strategy`` for ``distribute_cfg`` (name, cpu_devices)."""
    name = str(distribute_cfg.name)
    cpu_devices = int(distribute_cfg.get("cpu_devices", 0) or 0)
    if cpu_devices < 0:
        raise ConfigError(f"distribute.cpu_devices={cpu_devices} must be >= 0")
    return DISTRIBUTIONS.get(DISTRIBUTIONS.check(name))(cpu_devices)


@DISTRIBUTIONS.register("none")
def one_device(cpu_devices: int):
    """TensorFlow's default: one device (a GPU if there is one)."""
    import tensorflow as tf

    return tf.distribute.get_strategy()


@DISTRIBUTIONS.register("mirrored")
def mirrored(cpu_devices: int):
    """One replica per GPU of this machine (or per logical CPU, ``cpu_devices`` > 0)."""
    import tensorflow as tf

    devices = None
    if cpu_devices:
        devices = configure_cpu_devices(cpu_devices)
    elif not tf.config.list_physical_devices("GPU"):
        log.warning(
            "distribute=mirrored without GPUs or distribute.cpu_devices: one replica on the CPU"
        )
    return tf.distribute.MirroredStrategy(devices=devices)


@DISTRIBUTIONS.register("multi_worker")
def multi_worker(cpu_devices: int):
    """Several hosts (TF_CONFIG or Slurm), the devices of each mirrored."""
    import tensorflow as tf

    resolver = cluster_resolver()
    if cpu_devices:
        configure_cpu_devices(cpu_devices)
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


def task_is_chief(distribute_cfg: Any, environ: dict[str, str] | None = None) -> bool:
    """Whether this process writes the run folder: always, except for the non-chief
    workers of ``distribute=multi_worker`` (TF_CONFIG's task, else Slurm's SLURM_PROCID).

    As in TensorFlow's multi-worker guide, the chief is task "chief", or worker 0 when the
    cluster has no "chief" task. Needs no TensorFlow (the logging set-up asks early).
    """
    if str(distribute_cfg.name) != "multi_worker":
        return True
    env = os.environ if environ is None else environ
    if env.get("TF_CONFIG"):
        try:
            spec = json.loads(env["TF_CONFIG"])
            task = spec.get("task") or {}
            task_type, index = task.get("type"), int(task.get("index", 0))
            has_chief = "chief" in (spec.get("cluster") or {})
        except (ValueError, AttributeError, TypeError):
            return True  # cluster_resolver() reports the bad TF_CONFIG
        return task_type in (None, "chief") or (
            task_type == "worker" and index == 0 and not has_chief
        )
    return str(env.get("SLURM_PROCID", "0")) == "0"


class ClusterError(TripletLabError):
    """A worker of a multi-worker cluster died or stopped answering: training cannot go on."""


def cluster_fault(err: BaseException, distribute_cfg: Any, run_dir: object) -> ClusterError | None:
    """A :class:`ClusterError` for ``err`` when it is a multi-worker collective aborted
    because a peer is gone (TensorFlow's Unavailable, DeadlineExceeded, Aborted or
    Cancelled); None for anything else. Its one-line message gives TensorFlow's reason and
    says how to resume: start the job again on every worker, into ``run_dir``.

    The time is bounded by TensorFlow: MultiWorkerMirroredStrategy's coordination service
    declares a task dead after 10 s without its heartbeats (a killed process on a reachable
    host fails at once), and aborts every collective of the others.
    """
    import tensorflow as tf

    if str(getattr(distribute_cfg, "name", "none")) != "multi_worker":
        return None
    lost_peer = (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
    )
    if not isinstance(err, lost_peer):
        return None
    text = getattr(err, "message", None) or str(err)
    if "aborted by:" in text:  # "{{function_node ...}} Collective ops is aborted by: <why>"
        text = text.split("aborted by:", 1)[1]
    text = text.split("The error could be from a previous operation")[0]
    reason = one_line(text)
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return ClusterError(
        f"distribute=multi_worker: a worker of the cluster died or stopped answering "
        f"({type(err).__name__}: {reason}); training stopped. Start the job again on every "
        f"worker with the same command and hydra.run.dir ({run_dir}): it resumes from the "
        "chief's last checkpoint"
    )


def distribute_batches(distribution, make_dataset: Callable[[], Any], global_batch: int):
    """Split each global batch of ``make_dataset()`` across the distribution's replicas.

    ``make_dataset()`` yields (images [B, ...], labels [B]) global batches, the same on
    every worker. Replica r of N gets rows [r * B/N, (r + 1) * B/N) of each batch, so the
    all-gather in the step puts the global batch back together in its order. Without
    replicas the dataset itself is returned.
    """
    from tripletlab.errors import ConfigError

    replicas = distribution.num_replicas_in_sync
    if replicas == 1:
        return make_dataset()
    if global_batch % replicas:
        raise ConfigError(
            f"the global batch of {global_batch} images does not split evenly over {replicas} "
            f"replicas: use a batch size (trainer.batch_size, or P x K) divisible by {replicas}"
        )
    per_replica = global_batch // replicas

    def dataset_fn(context):
        pipelines = context.num_input_pipelines
        local = replicas // pipelines  # replicas fed by this worker's pipeline
        worker = context.input_pipeline_id
        ds = make_dataset().unbatch().batch(per_replica, drop_remainder=True)
        if pipelines > 1:  # keep this worker's replicas' slices of each global batch
            ds = ds.enumerate().filter(lambda i, _: (i % replicas) // local == worker)
            ds = ds.map(lambda _, batch: batch)
        return ds.prefetch(2)

    return distribution.distribute_datasets_from_function(dataset_fn)


def gather_global_batch(labels, embeddings):
    """This replica's slice -> the global batch, from inside a replica (or with one device).

    labels int [b], embeddings [b, D] -> (labels [N * b], float32 embeddings [N * b, D]) in
    replica order. The gather is float32 whatever the compute dtype.
    """
    import tensorflow as tf

    embeddings = tf.cast(embeddings, tf.float32)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return labels, embeddings
    # int64: MultiWorkerMirroredStrategy's collectives cannot gather int32 (host memory).
    all_labels = context.all_gather(tf.cast(labels, tf.int64), axis=0)
    return tf.cast(all_labels, labels.dtype), context.all_gather(embeddings, axis=0)


def global_batch_loss(labels, embeddings, loss_fn):
    """``loss_fn(labels, embeddings)`` over the global batch, from inside a replica.

    labels int [b], embeddings [b, D] (this replica's slice) -> (loss, fraction) of the
    global batch (:func:`gather_global_batch`).
    """
    return loss_fn(*gather_global_batch(labels, embeddings))
