"""Learning-rate schedule: linear warm-up, then constant or cosine decay to zero."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tripletlab")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step): peak * (step + 1) / warmup_steps during warm-up (the first update already
    moves, the warmup_steps-th reaches the peak), then peak, or a cosine to 0 at total_steps."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, cosine: bool = True):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)
        self.cosine = bool(cosine)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup_lr = peak * ops.minimum((step + 1.0) / warm, 1.0)
        if not self.cosine:
            return warmup_lr if self.warmup_steps > 0 else peak * ops.ones_like(step)
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine_lr = 0.5 * peak * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps == 0:
            return cosine_lr
        return ops.where(step < self.warmup_steps, warmup_lr, cosine_lr)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "cosine": self.cosine,
        }
