"""Training and evaluation of one configuration into one run folder.

The loop follows the Keras guide "writing a training loop from scratch": one compiled train
step, one compiled embed step, metrics reset every epoch. It knows nothing of YAML: ``cfg``
is any object with the attributes of :class:`tripletlab.config.Config`.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from tripletlab.config import METRICS, normalize_precision, to_container, validate
from tripletlab.errors import DataError, TrainingError, TripletLabError

log = logging.getLogger("tripletlab")

# The evaluation metrics, in metrics.csv's order (also the valid optimized_metric values).
RETRIEVAL_METRICS = list(METRICS)
METRIC_COLUMNS = [
    "epoch",
    "step",
    "loss",
    "fraction_positive",
    "embedding_norm",
    "embedding_spread",
    "learning_rate",
    *RETRIEVAL_METRICS,
    "epoch_seconds",
    "eval_seconds",
    "images_per_second",
]
MODEL_FILE = "embedding_model.keras"

# A collapsed epoch: the loss sits at its value for identical embeddings (the margin, or
# softplus(0) = ln 2 with a soft margin) while the batch's embeddings have almost no spread.
COLLAPSE_LOSS_TOLERANCE = 0.02  # relative to that value
COLLAPSE_SPREAD_RATIO = 0.01  # spread / norm
# trainer.mixed_precision (auto resolved) -> Keras policy name.
PRECISION_POLICIES = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
# Steps between two reads of the running means (NaN check, progress bar).
CHECK_EVERY = 20


def is_collapsed(loss: float, spread: float, norm: float, margin: float, soft: bool) -> bool:
    """Whether an epoch's mean loss, embedding spread and norm look like a collapse."""
    at = math.log(2.0) if soft else margin
    if at <= 0:
        return False
    return abs(loss - at) <= COLLAPSE_LOSS_TOLERANCE * at and spread <= COLLAPSE_SPREAD_RATIO * max(
        norm, 1e-2
    )


def read_metrics_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _clean(row: dict) -> dict:
    """Metrics for JSON: floats, NaN -> None."""
    out = {}
    for key, value in row.items():
        v = _as_float(value)
        out[key] = None if math.isnan(v) else (int(v) if key in ("epoch", "step") else v)
    return out


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def has_fast_bfloat16(gpus: list) -> bool:
    """Whether bfloat16 matrix units make mixed precision pay off here.

    GPU: compute capability 8.0 or later (Ampere on). CPU: Intel AMX (``amx_bf16``), where
    oneDNN runs bfloat16 convolutions 2-3x faster than float32 (whole train steps on a
    2-core Xeon: small CNN 1.3x, LeNet 1.7x, vgg_gap 1.9x; ``python -m tripletlab.bench
    train``). AVX512-BF16 alone was not measured, so it stays float32.
    """
    if gpus:
        import tensorflow as tf

        details = tf.config.experimental.get_device_details(gpus[0])
        return tuple(details.get("compute_capability") or (0, 0)) >= (8, 0)
    return "amx_bf16" in cpu_flags()


def setup_tf(trainer) -> tuple[bool, str, str]:
    """Threads, GPU memory growth and the precision policy from ``trainer`` (TrainerConfig).

    Returns (jit_compile, precision, device): ``trainer.jit_compile=auto`` means XLA on a GPU
    and not on a CPU, where it made the step 3x slower; ``trainer.mixed_precision=auto``
    means bfloat16 where ``has_fast_bfloat16``, else float32 ("off").
    """
    import keras
    import tensorflow as tf

    if trainer.threads:
        # Parallel jobs on one machine split the cores instead of oversubscribing them.
        with contextlib.suppress(RuntimeError):  # already initialised in this process
            tf.config.threading.set_intra_op_parallelism_threads(trainer.threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(trainer.threads, 2))
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    jit = str(trainer.jit_compile).lower()
    jit_compile = bool(gpus) if jit == "auto" else jit == "true"
    precision = normalize_precision(trainer.mixed_precision)
    if precision == "auto":
        precision = "bfloat16" if has_fast_bfloat16(gpus) else "off"
    keras.mixed_precision.set_global_policy(PRECISION_POLICIES[precision])
    return jit_compile, precision, "GPU" if gpus else "CPU"


class Run:
    """One training run in ``run_dir``; ``run()`` returns the optimised metric."""

    def __init__(self, cfg, run_dir: str | Path):
        validate(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.csv"
        self.summary_path = self.run_dir / "summary.json"
        self.started = time.time()

    # ----------------------------------------------------------------- set-up
    def _setup_tf(self):
        import keras
        import tensorflow as tf

        self.jit_compile, self.precision, self.device = setup_tf(self.cfg.trainer)
        keras.utils.set_random_seed(int(self.cfg.seed))
        if self.cfg.trainer.deterministic:
            tf.config.experimental.enable_op_determinism()
        log.info(
            "device %s, jit_compile=%s, precision=%s",
            self.device,
            self.jit_compile,
            self.precision,
        )

    def _load_data(self):
        from tripletlab.data import load_dataset

        data = load_dataset(self.cfg.dataset)
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

    def _build(self, data):
        import keras
        import tensorflow as tf

        from tripletlab.models import build_model
        from tripletlab.pipeline import TrainPipeline, effective_batch_size
        from tripletlab.schedules import WarmupCosine

        cfg = self.cfg
        self.batch_size = effective_batch_size(cfg.sampler, cfg.trainer.batch_size)
        self.pipeline = TrainPipeline(
            data.x_train,
            data.y_train,
            cfg.sampler,
            cfg.trainer.batch_size,
            cfg.seed,
            augment=cfg.trainer.augment,
        )
        steps = self.pipeline.steps_per_epoch
        self.model = build_model(cfg.model, data.image_shape, cfg.trainer.weight_decay)
        schedule = WarmupCosine(
            peak=cfg.trainer.learning_rate,
            warmup_steps=int(round(cfg.trainer.warmup_epochs * steps)),
            total_steps=steps * cfg.trainer.epochs,
            cosine=cfg.trainer.schedule == "cosine",
        )
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
        if self.precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        self.optimizer = optimizer
        self.schedule = schedule
        self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch_var
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.run_dir / "checkpoints"), max_to_keep=3
        )
        log.info(
            "model %s: %d parameters, embedding %d; %d steps of %d images per epoch",
            cfg.model.name,
            self.model.count_params(),
            cfg.model.embedding_size,
            steps,
            self.batch_size,
        )

    def _compile_steps(self):
        import keras

        # Updated inside the compiled step: no per-step Python work but the call itself.
        self.means = {k: keras.metrics.Mean(name=k) for k in ("loss", "fraction", "norm", "spread")}
        self.train_step, self.embed_step = make_steps(
            self.model,
            self.optimizer,
            self.cfg.mining,
            scales_loss=self.precision == "float16",
            jit_compile=self.jit_compile,
            means=self.means,
        )

    # --------------------------------------------------------------- evaluation
    def embed(self, images: np.ndarray) -> np.ndarray:
        return embed_images(
            self.embed_step, images, self.cfg.eval.batch_size, self.cfg.model.embedding_size
        )

    def evaluate(self, data) -> tuple[dict, np.ndarray]:
        metrics, test_emb, _ = evaluate_test_split(self.embed, data, self.cfg.eval)
        return metrics, test_emb

    # ------------------------------------------------------------- bookkeeping
    def _write_metrics(self, rows: list[dict]) -> None:
        from tripletlab.io_utils import atomic_write_csv

        atomic_write_csv(self.metrics_path, rows, METRIC_COLUMNS)

    def _write_summary(self, status: str, rows: list[dict], error: str | None = None) -> dict:
        from tripletlab.io_utils import atomic_write_json

        metric = self.cfg.optimized_metric
        evaluated = [r for r in rows if not math.isnan(_as_float(r.get(metric)))]
        last_eval = evaluated[-1] if evaluated else {}
        best = max(evaluated, key=lambda r: _as_float(r[metric])) if evaluated else None
        final = dict(rows[-1]) if rows else {}
        for key in RETRIEVAL_METRICS:  # the last evaluated values, if the last epoch had none
            if math.isnan(_as_float(final.get(key))) and key in last_eval:
                final[key] = last_eval[key]
        speeds = [_as_float(r["images_per_second"]) for r in rows]
        summary = {
            "status": status,
            "error": error,
            "metrics": _clean(final) if final else {},
            "best": {
                "metric": metric,
                "value": _as_float(best[metric]) if best else None,
                "epoch": int(_as_float(best["epoch"])) if best else None,
            },
            "epochs_done": len(rows),
            "wall_seconds": round(time.time() - self.started + self._previous_wall, 3),
            "train_seconds": round(sum(_as_float(r["epoch_seconds"]) for r in rows), 3),
            "images_per_second": round(float(np.median(speeds)), 1) if speeds else None,
            "device": getattr(self, "device", None),
            "precision": getattr(self, "precision", None),
            "config": to_container(self.cfg) if hasattr(self.cfg, "_metadata") else None,
        }
        atomic_write_json(self.summary_path, summary)
        return summary

    def _previous_summary(self) -> dict:
        import json

        if not self.summary_path.exists():
            return {}
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return {}

    # --------------------------------------------------------------- the loop
    def run(self) -> float:
        previous = self._previous_summary()
        self._previous_wall = float(previous.get("wall_seconds") or 0.0)
        rows: list[dict] = []
        try:
            return self._run(previous, rows)
        except TripletLabError as err:
            self._write_summary("failed", rows, error=str(err))
            raise
        except KeyboardInterrupt:
            self._write_summary("interrupted", rows, error="interrupted by the user")
            raise

    def _run(self, previous: dict, rows: list[dict]) -> float:
        import tensorflow as tf

        cfg = self.cfg
        metric = cfg.optimized_metric
        model_path = self.run_dir / "model" / MODEL_FILE
        finished = previous.get("status") == "collapsed" or (
            previous.get("status") == "ok"
            and int(previous.get("epochs_done") or 0) >= cfg.trainer.epochs
        )
        if finished and model_path.exists():
            value = (previous.get("metrics") or {}).get(metric)
            log.info(
                "run already finished (%s) in %s; not training again",
                previous["status"],
                self.run_dir,
            )
            rows.extend(read_metrics_csv(self.metrics_path))
            return float("nan") if value is None else float(value)

        self._setup_tf()
        data = self._load_data()
        self._build(data)
        self._compile_steps()

        start_epoch = 0
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).expect_partial()
            start_epoch = int(self.epoch_var.numpy())
            done = [
                r for r in read_metrics_csv(self.metrics_path) if int(r["epoch"]) <= start_epoch
            ]
            rows.extend(done)
            log.info("resuming from %s after epoch %d", self.manager.latest_checkpoint, start_epoch)

        writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        steps = self.pipeline.steps_per_epoch
        collapsed_epochs = 0
        status = "ok"
        test_emb = None
        for epoch in range(start_epoch + 1, cfg.trainer.epochs + 1):
            row = self._train_epoch(epoch, steps)
            evaluate_now = epoch % cfg.eval.every == 0 or epoch == cfg.trainer.epochs
            if evaluate_now:
                t0 = time.perf_counter()
                scores, test_emb = self.evaluate(data)
                row.update(scores)
                row["eval_seconds"] = round(time.perf_counter() - t0, 3)
            rows.append(row)
            self.epoch_var.assign(epoch)
            if epoch % cfg.trainer.checkpoint_every == 0 or epoch == cfg.trainer.epochs:
                self.manager.save(checkpoint_number=epoch)
            self._write_metrics(rows)
            with writer.as_default(step=int(row["step"])):
                for key, value in row.items():
                    if key not in ("epoch", "step") and not math.isnan(_as_float(value)):
                        tf.summary.scalar(key, _as_float(value))
            writer.flush()
            self._log_epoch(row)
            if is_collapsed(
                row["loss"],
                row["embedding_spread"],
                row["embedding_norm"],
                cfg.mining.margin,
                cfg.mining.soft_margin,
            ):
                collapsed_epochs += 1
                log.warning(
                    "epoch %d looks collapsed: loss %.4f sits at the margin and the embeddings "
                    "have almost no spread (%.2e). Lower the learning rate, use "
                    "model.l2_normalize=true, sampler=pk or mining=semi_hard.",
                    epoch,
                    row["loss"],
                    row["embedding_spread"],
                )
            else:
                collapsed_epochs = 0
            self._write_summary("running", rows)
            if collapsed_epochs and (
                collapsed_epochs >= max(cfg.trainer.collapse_patience, 1)
                or epoch == cfg.trainer.epochs
            ):
                status = "collapsed"
                break
        writer.close()
        self._finish(data, rows, test_emb)
        summary = self._write_summary(status, rows, error=self._collapse_message(status))
        if status == "collapsed":
            log.error(summary["error"])
        value = summary["metrics"].get(metric)
        log.info("done: %s = %s; run folder %s", metric, value, self.run_dir)
        return float("nan") if value is None else float(value)

    @staticmethod
    def _collapse_message(status: str) -> str | None:
        if status != "collapsed":
            return None
        return (
            "training collapsed: every embedding moved to the same point and the loss sits at "
            "the margin. Try a lower trainer.learning_rate, model.l2_normalize=true, sampler=pk, "
            "or mining=semi_hard."
        )

    def _check_finite(self, epoch: int, last_step: int) -> None:
        """Raise TrainingError if a loss or an embedding became NaN or Inf since the epoch began.

        The running means turn non-finite with the first bad step, so reading two scalars
        every CHECK_EVERY steps catches it without a sync per step. The mean norm catches
        non-finite embeddings, which can leave a finite loss (comparisons with NaN are all
        False, so nothing is mined).
        """
        loss, norm = float(self.means["loss"].result()), float(self.means["norm"].result())
        if math.isfinite(loss) and math.isfinite(norm):
            return
        what, value = ("loss", loss) if not math.isfinite(loss) else ("embeddings' norm", norm)
        raise TrainingError(
            f"training diverged in epoch {epoch}, by step {last_step}: the {what} became "
            f"{value}; training stopped and the last good checkpoint "
            f"({self.manager.latest_checkpoint or 'none yet'}) is kept. "
            "Lower trainer.learning_rate or use model.l2_normalize=true."
        )

    def _train_epoch(self, epoch: int, steps: int) -> dict:
        import keras

        for m in self.means.values():
            m.reset_state()
        show_bar = self.cfg.trainer.progress == "bar" or (
            self.cfg.trainer.progress == "auto" and sys.stdout.isatty()
        )
        bar = (
            keras.utils.Progbar(steps, stateful_metrics=["loss", "fraction", "img/s"])
            if show_bar
            else None
        )
        first_step = (epoch - 1) * steps
        t0 = time.perf_counter()
        for i, (images, labels) in enumerate(self.pipeline.epoch(epoch)):
            self.train_step(images, labels)
            if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps:
                self._check_finite(epoch, first_step + i + 1)
                if bar is not None:
                    rate = (i + 1) * self.batch_size / (time.perf_counter() - t0)
                    bar.update(
                        i + 1,
                        values=[
                            ("loss", float(self.means["loss"].result())),
                            ("fraction", float(self.means["fraction"].result())),
                            ("img/s", rate),
                        ],
                    )
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
            "images_per_second": round(steps * self.batch_size / seconds, 1),
        }

    def _log_epoch(self, row: dict) -> None:
        parts = [f"epoch {row['epoch']}/{self.cfg.trainer.epochs}"]
        for key in ("loss", "fraction_positive", "precision_at_1", "map_at_r", "knn_accuracy"):
            value = _as_float(row.get(key))
            if not math.isnan(value):
                parts.append(f"{key} {value:.4f}")
        parts.append(f"{row['epoch_seconds']:.1f}s ({row['images_per_second']:.0f} img/s)")
        if "eval_seconds" in row:
            parts.append(f"eval {row['eval_seconds']:.1f}s")
        log.info(", ".join(parts))

    def _finish(self, data, rows: list[dict], test_emb) -> None:
        """Model, plots and projector after the last epoch."""
        from tripletlab.artifacts import write_artifacts

        model_dir = self.run_dir / "model"
        model_dir.mkdir(exist_ok=True)
        tmp = model_dir / f".tmp-{MODEL_FILE}"
        self.model.save(tmp)
        tmp.replace(model_dir / MODEL_FILE)
        if test_emb is None:
            test_emb = self.embed(data.x_test)
        write_artifacts(self.run_dir, rows, test_emb, data, max_points=self.cfg.eval.max_points)


def make_steps(
    model,
    optimizer,
    mining,
    scales_loss: bool = False,
    jit_compile: bool = False,
    means: dict | None = None,
):
    """The compiled train step and embed step for ``model``.

    train_step(images [B,H,W,C], labels [B]) -> (loss, fraction, mean norm, mean spread), all
    float32 scalars; embed_step(images) -> float32 [B, D]. ``mining`` has strategy, margin,
    squared and soft_margin. ``scales_loss``: float16 mixed precision (a LossScaleOptimizer).
    ``means``: optional keras.metrics.Mean objects keyed loss, fraction, norm and spread,
    updated inside the step.
    """
    import tensorflow as tf

    from tripletlab.losses import triplet_loss

    def train_step(images, labels):
        with tf.GradientTape() as tape:
            embeddings = model(images, training=True)
            loss, fraction = triplet_loss(
                labels,
                embeddings,
                strategy=mining.strategy,
                margin=mining.margin,
                squared=mining.squared,
                soft_margin=mining.soft_margin,
            )
            total = loss
            if model.losses:
                total = total + tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
            scaled = optimizer.scale_loss(total) if scales_loss else total
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        emb = tf.cast(embeddings, tf.float32)
        norm = tf.reduce_mean(tf.norm(emb, axis=1))
        # Mean distance to the batch's centroid: near zero when the embeddings collapse.
        spread = tf.reduce_mean(tf.norm(emb - tf.reduce_mean(emb, axis=0), axis=1))
        if means is not None:
            values = {"loss": loss, "fraction": fraction, "norm": norm, "spread": spread}
            for key, value in values.items():
                means[key].update_state(value)
        return loss, fraction, norm, spread

    def embed_step(images):
        return tf.cast(model(images, training=False), tf.float32)

    return (
        tf.function(train_step, jit_compile=jit_compile),
        tf.function(embed_step, jit_compile=jit_compile),
    )


def embed_images(embed_step, images: np.ndarray, batch_size: int, dim: int) -> np.ndarray:
    """uint8 images [N, H, W, C] -> float32 embeddings [N, dim], in batches of batch_size.

    Training's evaluation and the reuse commands embed the same way, so the same images give
    the same embeddings (oneDNN's results depend on the batch's size).
    """
    from tripletlab.pipeline import eval_dataset

    parts = [embed_step(x).numpy() for x in eval_dataset(images, int(batch_size))]
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def evaluate_test_split(embed, data, eval_cfg) -> tuple[dict, np.ndarray, np.ndarray]:
    """Every metric on the test split: the test set is queries and gallery (leaving the query
    out), the train set is kNN's gallery. Returns (metrics, test embeddings, train ones)."""
    from tripletlab.metrics import evaluate_embeddings

    test_emb, train_emb = embed(data.x_test), embed(data.x_train)
    metrics = evaluate_embeddings(
        test_emb,
        data.y_test,
        train_emb,
        data.y_train,
        knn_k=eval_cfg.knn_k,
        chunk_size=eval_cfg.chunk_size,
    )
    return metrics, test_emb, train_emb


def train(cfg, run_dir: str | Path) -> float:
    """Train ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint); the optimised metric.

    The Keras precision policy the run sets is global: it is put back afterwards, so that
    models built later in the same process (tests, notebooks) are not silently bfloat16.
    """
    import keras

    policy = keras.mixed_precision.global_policy()
    try:
        return Run(cfg, run_dir).run()
    finally:
        keras.mixed_precision.set_global_policy(policy)
