"""The training loop: it only connects parts built elsewhere.

Runtime (:mod:`tripletlab.runtime`), data (:mod:`tripletlab.data`, :mod:`tripletlab.data.pipeline`),
model (:mod:`tripletlab.models`), the compiled step (:mod:`.steps`), checkpoints
(:mod:`.checkpoints`), monitors (:mod:`.monitors`), evaluation (:mod:`tripletlab.inference`)
and the run folder (:mod:`tripletlab.run_folder`). It knows nothing of YAML: ``cfg`` is any
object with the attributes of :class:`tripletlab.config.Config`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tripletlab.artifacts import write_views
from tripletlab.config import METRICS, to_container, validate
from tripletlab.data.samplers import effective_batch_size
from tripletlab.distribute import (
    distribute_batches,
    make_distribution,
    uses_logical_cpus,
)
from tripletlab.errors import DataError
from tripletlab.inference import embed_images, evaluate_split, make_embed_step, query_sample
from tripletlab.io_utils import atomic_path
from tripletlab.run_folder import RunFolder, Status, build_summary
from tripletlab.run_record import record_data
from tripletlab.runtime import Runtime, setup_tf
from tripletlab.training.callbacks import Callbacks
from tripletlab.training.checkpoints import Checkpoints, saved_rows
from tripletlab.training.memory import CrossBatchMemory
from tripletlab.training.monitors import (
    CHECK_EVERY,
    CollapseDetector,
    NanGuard,
    ProgressBar,
    log_epoch,
)
from tripletlab.training.steps import make_running_means, make_train_step

log = logging.getLogger("tripletlab")


class Trainer:
    """One run of ``cfg`` in ``folder``; :meth:`run` returns the optimised metric.

    ``callbacks``: :class:`~.callbacks.Callbacks`; the loop calls their ``on_epoch_end(row)``
    with each epoch's metrics row once it is checkpointed and written. ``chief``: whether this
    process writes the run folder (multi-worker: the other workers write nothing).
    """

    def __init__(self, cfg: Any, folder: RunFolder, callbacks: Callbacks, chief: bool = True):
        validate(cfg)
        self.cfg = cfg
        self.folder = folder
        self.callbacks = callbacks
        self.started = time.time()
        self.previous_wall = float(folder.read_summary().get("wall_seconds") or 0.0)
        self.rows: list[dict] = []  # the metrics rows: resumed ones, then this session's
        self.runtime = None
        self.replicas = 1
        self.chief = chief

    # ------------------------------------------------------------------ record
    def write_summary(self, status: Status, error: str | None = None) -> dict:
        """Write the run summary (the chief only) and return its content."""
        summary = build_summary(
            status,
            self.rows,
            self.cfg.optimized_metric,
            error=error,
            wall_seconds=time.time() - self.started + self.previous_wall,
            device=self.runtime.device if self.runtime else None,
            precision=self.runtime.precision if self.runtime else None,
            replicas=self.replicas,
            config=to_container(self.cfg),
        )
        if self.chief:
            self.folder.write_summary(summary)
        return summary

    def _metric_value(self, metrics: dict) -> float:
        value = metrics.get(self.cfg.optimized_metric)
        return math.nan if value is None else float(value)

    # --------------------------------------------------------------------- run
    def run(self) -> float:
        cfg, folder = self.cfg, self.folder
        if folder.is_finished(cfg.trainer.epochs) and folder.model_path.exists():
            previous = folder.read_summary()
            log.info(
                "run already finished (%s) in %s; not training again",
                previous["status"],
                folder.path,
            )
            if self.chief:
                self._repair_metrics(previous)
            return self._metric_value(previous.get("metrics") or {})

        self.runtime, distribution = setup_runtime(cfg)
        self.replicas = distribution.num_replicas_in_sync
        data = load_training_data(cfg.dataset)
        if self.chief:
            record_data(folder, cfg.dataset)
        with distribution.scope():
            parts = Parts.build(
                cfg, data, self.runtime, distribution, folder, self.checkpoint_dir()
            )
        try:
            return self._train(parts, data)
        finally:
            parts.checkpoints.close()

    def checkpoint_dir(self) -> Path:
        """The run's checkpoints/ for the chief; a temporary folder for another worker, which
        still has to save (saving is collective) but keeps nothing (removed at the end)."""
        if self.chief:
            return self.folder.checkpoints_dir
        return Path(tempfile.mkdtemp(prefix="tripletlab-worker-checkpoints-"))

    def _train(self, parts: Parts, data: Any) -> float:
        cfg, folder = self.cfg, self.folder
        start_epoch = parts.checkpoints.restore_latest(folder.checkpoints_dir)
        written = folder.read_metrics(rebuilt=True)
        self.rows = committed_rows(parts.checkpoints.rows, written, start_epoch)
        if self.chief and (written or self.rows):  # the metrics file: committed epochs only
            folder.write_metrics(self.rows)
        collapse = CollapseDetector(
            cfg.mining.margin,
            cfg.mining.soft_margin,
            cfg.trainer.collapse_patience,
            cfg.trainer.epochs,
        )
        status, test_emb = Status.OK, None
        sample = query_sample(len(data.x_test), cfg.eval.sample_queries)
        if self.chief and self._evaluation_lost(start_epoch):
            # Killed (or failed) between the epoch's commit and its evaluation: the weights
            # restored are the ones it evaluates, so it is run now as it would have been.
            full = full_evaluation_due(cfg.eval, start_epoch, cfg.trainer.epochs)
            test_emb = self._evaluate(parts, data, self.rows[-1], None if full else sample)
            folder.write_metrics(self.rows)
        for epoch in range(start_epoch + 1, cfg.trainer.epochs + 1):
            row = parts.train_epoch(epoch)
            # Decided on the training statistics, before evaluating: the last epoch a
            # run trains is always fully evaluated, also when a collapse ends it early.
            stop = collapse.update(row)
            self.rows.append(row)
            # The epoch's commit: its weights and its row (with every earlier one) in one
            # checkpoint, saved before evaluating: a failure there loses no training.
            if epoch % cfg.trainer.checkpoint_every == 0 or epoch == cfg.trainer.epochs:
                parts.checkpoints.save(epoch, self.rows)
                if self.chief:  # shown at once; rebuilt from the checkpoint if killed here
                    folder.write_metrics(self.rows)
            if self.chief and (stop or evaluation_due(cfg.eval, epoch, cfg.trainer.epochs)):
                full = stop or full_evaluation_due(cfg.eval, epoch, cfg.trainer.epochs)
                test_emb = self._evaluate(parts, data, row, None if full else sample)
            if self.chief:
                folder.write_metrics(self.rows)
            log_epoch(row, cfg.trainer.epochs)
            self.write_summary(Status.RUNNING)
            self.callbacks.on_epoch_end(row)
            if stop:
                status = Status.COLLAPSED
                break

        error = CollapseDetector.MESSAGE if status == Status.COLLAPSED else None
        if self.chief:
            self._save_model(parts.model)
            if test_emb is None:
                test_emb = parts.embed(data.x_test)
            write_views(
                folder,
                self.rows,
                test_emb,
                data.y_test,
                data.x_test,
                data.class_names,
                cfg.eval.max_points,
                name=f"{data.name} test",
            )
        summary = self.write_summary(status, error=error)
        if error:
            log.error(error)
        value = summary["metrics"].get(cfg.optimized_metric)
        if self.chief:
            log.info("done: %s = %s; run folder %s", cfg.optimized_metric, value, folder.path)
        return math.nan if value is None else float(value)

    def _evaluate(self, parts: Parts, data: Any, row: dict, queries: Any) -> np.ndarray:
        """Add the retrieval metrics to ``row`` (all queries when ``queries`` is None, with
        k-NN); the test embeddings."""
        t0 = time.perf_counter()
        scores, test_emb, _ = evaluate_split(
            parts.embed, data, self.cfg.eval, queries=queries, knn=queries is None
        )
        row.update(scores)
        row["eval_seconds"] = round(time.perf_counter() - t0, 3)
        row["eval_queries"] = len(data.x_test) if queries is None else len(queries)
        return test_emb

    def _evaluation_lost(self, start_epoch: int) -> bool:
        """Whether the epoch this session resumed after was due an evaluation that its row
        lacks (its checkpoint is saved before evaluating, and the run ended in between)."""
        if start_epoch == 0 or not self.rows or int(self.rows[-1]["epoch"]) != start_epoch:
            return False
        due = evaluation_due(self.cfg.eval, start_epoch, self.cfg.trainer.epochs)
        return due and cell(self.rows[-1].get("eval_queries")) == ""

    def _repair_metrics(self, summary: dict) -> None:
        """A finished run's metrics file that lost, gained or garbled rows (by hand), rebuilt
        from its last checkpoint's rows, the last one's evaluation from the summary."""
        done = int(summary.get("epochs_done") or 0)
        written = self.folder.read_metrics(rebuilt=True)
        if [r.get("epoch") for r in written] == [str(e) for e in range(1, done + 1)]:
            return
        saved = saved_rows(self.folder.checkpoints_dir)
        if saved is None or len(saved) != done:
            return
        rows = committed_rows(saved, written, done)
        final = summary.get("metrics") or {}
        if cell(rows[-1].get("eval_queries")) == "" and final.get("epoch") == done:
            rows[-1].update({k: final.get(k) for k in EVALUATION_COLUMNS if k in final})
            if final.get("eval_queries") is not None:
                rows[-1]["eval_queries"] = int(final["eval_queries"])
        log.warning("%s did not hold the run's %d epochs: rebuilt", self.folder.metrics_path, done)
        self.folder.write_metrics(rows)

    def _save_model(self, model) -> None:
        """The embedding model, written under a unique temporary name, synced, then renamed."""
        with atomic_path(self.folder.model_path) as tmp:
            model.save(tmp)


# What an epoch's evaluation adds to its row, after the row was committed.
EVALUATION_COLUMNS = (*METRICS, "eval_seconds", "eval_queries")


def cell(value: Any) -> str:
    """A metrics value as the metrics file holds it ("" for missing or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def committed_rows(saved: list[dict] | None, written: list[dict], epoch: int) -> list[dict]:
    """The metrics rows of epochs 1..``epoch``, the last committed one: those saved in its
    checkpoint, each with the evaluation the metrics file holds for it (written after the
    commit; the same training values say it is that row). For a checkpoint that predates
    rows (``saved`` None), the metrics file's rows up to ``epoch``."""
    if saved is None:
        return [r for r in written if int(r["epoch"]) <= epoch]
    by_epoch = {r.get("epoch"): r for r in written}
    rows = []
    for row in saved:
        row = dict(row)
        twin = by_epoch.get(cell(row.get("epoch")))
        if twin is not None and all(twin.get(k) == cell(row.get(k)) for k in ("step", "loss")):
            for key in EVALUATION_COLUMNS:
                if cell(row.get(key)) == "" and twin.get(key):
                    row[key] = twin[key]
        rows.append(row)
    return rows


def evaluation_due(eval_cfg: Any, epoch: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` (1-based) of ``epochs`` evaluates the test split: every
    ``every`` epochs, every ``full_every`` epochs (when > 0) and after the last."""
    full_every = eval_cfg.full_every
    return (
        epoch % eval_cfg.every == 0
        or epoch == epochs
        or (full_every > 0 and epoch % full_every == 0)
    )


def full_evaluation_due(eval_cfg: Any, epoch: int, epochs: int) -> bool:
    """Whether that evaluation is full (every query, k-NN on the train split) rather than
    the sampled estimate: always after the last epoch, every ``full_every`` epochs, and
    every time when ``sample_queries`` is null."""
    every = eval_cfg.full_every
    return epoch == epochs or eval_cfg.sample_queries is None or (every > 0 and epoch % every == 0)


def setup_runtime(cfg: Any) -> tuple[Runtime, Any]:
    """TensorFlow's runtime for ``cfg.trainer``, the ``tf.distribute`` distribution for ``cfg.distribute``,
    the seeds, and op determinism if asked. Returns (runtime, distribution)."""
    import keras
    import tensorflow as tf

    runtime = setup_tf(cfg.trainer)
    # Before anything creates a tensor: it may split the CPU into logical devices.
    distribution = make_distribution(cfg.distribute)
    if runtime.jit_compile and uses_logical_cpus(distribution):
        # XLA compiles every replica's step for the first CPU device, and logical CPUs share
        # one physical one: TensorFlow cannot run it (its "tf.Variable on a different
        # device" known issue). GPUs and one CPU per worker are fine.
        log.warning("trainer.jit_compile is off: XLA cannot run replicas on logical CPU devices")
        runtime = dataclasses.replace(runtime, jit_compile=False)
    keras.utils.set_random_seed(int(cfg.seed))
    if cfg.trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    log.info(
        "device %s, jit_compile=%s, precision=%s, %d replica(s)",
        runtime.device,
        runtime.jit_compile,
        runtime.precision,
        distribution.num_replicas_in_sync,
    )
    return runtime, distribution


@dataclass
class Parts:
    """What one epoch needs: the pipeline, the model, its optimizer, steps and checkpoints."""

    cfg: Any
    distribution: Any
    pipeline: Any
    model: Any
    schedule: Any
    checkpoints: Checkpoints
    means: dict
    train_step: Callable
    embed_step: Callable
    guard: NanGuard
    progress: ProgressBar
    batch_size: int  # the global batch

    @classmethod
    def build(
        cls,
        cfg: Any,
        data: Any,
        runtime: Runtime,
        distribution: Any,
        folder: RunFolder,
        checkpoint_dir: Path,
    ) -> Parts:
        """Everything that holds variables: call it inside ``distribution.scope()``."""
        import keras

        from tripletlab.data.pipeline import TrainPipeline
        from tripletlab.models import build_model
        from tripletlab.schedules import WarmupCosine

        pipeline = TrainPipeline(
            data.x_train,
            data.y_train,
            cfg.sampler,
            cfg.trainer.batch_size,
            cfg.seed,
            augment=cfg.trainer.augment,
            max_steps=cfg.trainer.steps_per_epoch,
        )
        steps = pipeline.steps_per_epoch
        model = build_model(cfg.model, data.image_shape, cfg.trainer.weight_decay)
        schedule = WarmupCosine(
            peak=cfg.trainer.learning_rate,
            warmup_steps=int(round(cfg.trainer.warmup_epochs * steps)),
            total_steps=steps * cfg.trainer.epochs,
            cosine=cfg.trainer.schedule == "cosine",
        )
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
        if runtime.precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Built now, so that a checkpoint restores its slots and a mismatch is an error.
        optimizer.build(model.trainable_variables)
        memory = None
        if cfg.mining.memory_size > 0:  # in the checkpoint: a resumed run mines the same
            memory = CrossBatchMemory(
                cfg.mining.memory_size, cfg.model.embedding_size, cfg.mining.memory_start
            )
        checkpoints = Checkpoints(
            checkpoint_dir,
            model,
            optimizer,
            temporary=checkpoint_dir != folder.checkpoints_dir,
            memory=memory,
        )
        means = make_running_means()
        train_step = make_train_step(
            model,
            optimizer,
            cfg.mining,
            scales_loss=runtime.precision == "float16",
            jit_compile=runtime.jit_compile,
            means=means,
            distribution=distribution,
            memory=memory,
            seed=cfg.seed,
        )
        batch_size = effective_batch_size(cfg.sampler, cfg.trainer.batch_size)
        log.info(
            "model %s: %d parameters, embedding %d; %d steps of %d images per epoch",
            cfg.model.name,
            model.count_params(),
            cfg.model.embedding_size,
            steps,
            batch_size,
        )
        return cls(
            cfg=cfg,
            distribution=distribution,
            pipeline=pipeline,
            model=model,
            schedule=schedule,
            checkpoints=checkpoints,
            means=means,
            train_step=train_step,
            embed_step=make_embed_step(model, runtime.jit_compile),
            guard=NanGuard(means, lambda: checkpoints.latest),
            progress=ProgressBar(steps, batch_size, cfg.trainer.progress),
            batch_size=batch_size,
        )

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, C] -> float32 [N, D] with the model as it is now."""
        eval_cfg = self.cfg.eval
        return embed_images(
            self.embed_step, images, eval_cfg.batch_size, self.cfg.model.embedding_size
        )

    def train_epoch(self, epoch: int) -> dict:
        """Train one epoch; its metrics row without the retrieval metrics."""
        import tensorflow as tf

        steps, batch_size = self.pipeline.steps_per_epoch, self.batch_size
        for m in self.means.values():
            m.reset_state()
        self.progress.start()
        first_step = (epoch - 1) * steps
        t0 = time.perf_counter()
        batches = distribute_batches(
            self.distribution, lambda: self.pipeline.epoch(epoch), batch_size
        )
        try:
            for i, (images, labels) in enumerate(batches):
                self.train_step(images, labels)
                if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
                    self.guard.check(epoch, first_step + i + 1)
                    self.progress.update(i + 1, self.means)
        except tf.errors.InvalidArgumentError:
            # A streamed image that fails to decode: TensorFlow's message names no file.
            unreadable = self.pipeline.find_unreadable(epoch)
            if unreadable is None:
                raise
            raise unreadable from None
        seconds = time.perf_counter() - t0
        step = epoch * steps
        return {
            "epoch": epoch,
            "step": step,
            "loss": float(self.means["loss"].result()),
            "fraction_positive": float(self.means["fraction"].result()),
            "embedding_norm": float(self.means["norm"].result()),
            "embedding_spread": float(self.means["spread"].result()),
            "learning_rate": float(self.schedule(step)),
            "epoch_seconds": round(seconds, 3),
            "images_per_second": round(steps * batch_size / seconds, 1),
        }


def load_training_data(dataset_cfg: Any):
    """The dataset, checked to hold at least two classes with two images each."""
    from tripletlab.data import load_dataset

    data = load_dataset(dataset_cfg)
    classes, counts = np.unique(data.y_train, return_counts=True)
    if len(classes) < 2:
        raise DataError(
            f"dataset {data.name!r} has {len(classes)} class in its training split; "
            "a triplet needs at least two classes"
        )
    if counts.min() < 2:
        lonely = [data.class_names[int(c)] for c in classes[counts < 2]]
        raise DataError(
            f"class(es) {lonely} of {data.source} have fewer than 2 training images; "
            "a triplet needs two images of a class: add images or remove the class"
        )
    log.info(
        "data %s from %s: train %s, test %s, %d classes",
        data.name,
        data.source,
        data.x_train.shape,
        data.x_test.shape,
        data.num_classes,
    )
    return data
