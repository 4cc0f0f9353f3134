"""Test session set-up: quiet TensorFlow, split the CPU into 4 logical devices, scale time limits.

Logical devices can only be created before TensorFlow's runtime starts, so
this happens once, at import, before any test runs an op. One-device tests
use the first device; mirrored tests take the first 2 or 4.

pytest-timeout's per-test limit (`timeout` in setup.cfg) is multiplied by
`TEST_TIMEOUT_SCALE` (tests/timeouts.py), and by 3 for `slow` tests; an explicit
`--timeout` or `PYTEST_TIMEOUT` is taken as given.
"""

import collections
import os
import time

import pytest
from timeouts import seconds

SLOW_TEST_LIMIT_FACTOR = 3

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tensorflow as tf  # noqa: E402

LOGICAL_CPUS = 4
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(LOGICAL_CPUS)]
)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Before pytest-timeout reads its settings: setup.cfg's per-test limit times TEST_TIMEOUT_SCALE."""
    if not config.pluginmanager.hasplugin("timeout"):
        return
    if (
        config.getoption("timeout") is None
        and "PYTEST_TIMEOUT" not in os.environ
        and config.getini("timeout")
    ):
        config.option.timeout = seconds(float(config.getini("timeout")))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The modules with the most slow tests first: under `pytest -n 2 --dist loadfile`
    (scripts/test.sh) the longest files start at once rather than last. After `-m`/`-k` have
    deselected (trylast), so `-m "not slow"` keeps the collection order. The sort is stable: each
    module's tests stay together, so module-scoped fixtures are still built once. Slow tests get a
    longer per-test limit."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])
    limit = config.getoption("timeout", None) if config.pluginmanager.hasplugin("timeout") else None
    if limit:
        for item in items:
            if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
                item.add_marker(pytest.mark.timeout(SLOW_TEST_LIMIT_FACTOR * limit))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With `TEST_CPU_REPORT=<file>`: a line per test with its wall time and this process's CPU time.

    A test whose wall time far exceeds its CPU time either waits for a subprocess or stalls
    (docs/testing.md, "Finding where the time goes")."""
    report = os.environ.get("TEST_CPU_REPORT")
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    if report:
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with open(report, "a") as out:
            out.write(f"{wall:9.2f} {cpu:9.2f} {os.getpid()} {item.nodeid}\n")
