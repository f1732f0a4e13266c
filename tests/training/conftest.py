"""Two logical CPU devices for the in-process tests here that run a 2-replica
MirroredStrategy (tests/training/test_steps.py).

TensorFlow fixes its logical devices when it starts, once per process, so the CPU is split
while this file is loaded (collection, before any test runs an op). Ops without a device
scope still run on /cpu:0, so the other tests are unchanged. If TensorFlow had already
started, the split is skipped and ``configure_cpu_devices(2)`` in the test fails with its
"start a new process" error rather than the test passing on one device.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

with contextlib.suppress(RuntimeError):  # TensorFlow already started: see above
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(2)]
    )
