"""Test session set-up: quiet TensorFlow and split the CPU into 4 logical devices.

Logical devices can only be created before TensorFlow's runtime starts, so
this happens once, at import, before any test runs an op. One-device tests
use the first device; mirrored tests take the first 2 or 4.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tensorflow as tf  # noqa: E402

LOGICAL_CPUS = 4
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(LOGICAL_CPUS)]
)


def pytest_collection_modifyitems(items):
    """Modules with slow tests first: under `pytest -n 2` (scripts/test.sh) the longest file
    starts at once rather than last. The sort is stable: each module's tests stay together, so
    module-scoped fixtures are still built once."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
