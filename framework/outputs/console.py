"""What a run prints: the framework's progress, warnings and errors, not libraries' internals.

* Records below WARNING that libraries log from their own modules (orbax's
  every checkpointing step: temporary directories, renames, timings) are
  dropped unless absl's verbosity asks for debug output: `--verbosity=1` on
  the command line, or `absl.logging.set_verbosity("debug")` in Python.
  Their warnings and errors always show.
* absl shows only warnings until `app.run` has parsed the flags, so a Trainer
  driven from plain Python would train in silence. `show_info()` lowers absl's
  level to INFO there (the epoch, checkpoint and progress lines), unless the
  program has set absl's level itself.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import flags, logging

# Packages whose INFO records are internals: they log through absl from their own modules.
QUIET_PACKAGES = ("orbax",)
_DIRS = tuple(f"{os.sep}{name}{os.sep}" for name in QUIET_PACKAGES)
# Warnings that describe what the framework asked for, not a problem: a reader opens checkpoints
# read-only; a save between evaluations (preemption, every_steps) is no keep-best candidate.
_EXPECTED_WARNINGS = ("Given directory is read only", "Requested `tracked_metric`; did not provide metrics")


def _shown(record: std_logging.LogRecord) -> bool:
    if not any(d in record.pathname for d in _DIRS):
        return True
    if record.levelno >= std_logging.WARNING and not str(record.msg).startswith(_EXPECTED_WARNINGS):
        return True
    return logging.get_absl_logger().getEffectiveLevel() <= std_logging.DEBUG


def quiet_libraries() -> None:
    """Drops libraries' INFO records (see the module docstring); idempotent."""
    absl_logger = logging.get_absl_logger()
    if _shown not in absl_logger.filters:
        absl_logger.addFilter(_shown)


def show_info() -> None:
    """Lets absl's INFO lines through when no `app.run` set the level (plain Python)."""
    absl_logger = logging.get_absl_logger()
    if not flags.FLAGS.is_parsed() and absl_logger.level == std_logging.NOTSET:
        absl_logger.setLevel(std_logging.INFO)
