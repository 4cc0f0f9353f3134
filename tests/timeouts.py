"""Every wait in the tests, scaled by one setting: `TEST_TIMEOUT_SCALE` (default 1).

The defaults passed to `seconds()` are generous enough for a 2-core machine at load 8-16;
set e.g. `TEST_TIMEOUT_SCALE=3` on a slower runner. A timeout only stops a hung test: no test
asserts on how long something took.
"""

import os


def scale() -> float:
    """The factor from `TEST_TIMEOUT_SCALE`.

    Returns:
        A positive float; 1.0 when the variable is unset or empty.

    Raises:
        ValueError: the variable is set but not a positive number.
    """
    raw = os.environ.get("TEST_TIMEOUT_SCALE", "").strip()
    try:
        value = float(raw) if raw else 1.0
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(
            f"TEST_TIMEOUT_SCALE={raw!r}: set a positive number of times the default waits, e.g. 2."
        )
    return value


def seconds(n: float) -> float:
    """`n` seconds times `TEST_TIMEOUT_SCALE`: a subprocess, collective or polling limit."""
    return n * scale()
