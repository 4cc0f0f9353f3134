"""`config.profile_steps`: a tf.profiler trace of a range of training steps, written to the workdir."""

from __future__ import annotations

import tensorflow as tf
from absl import logging


class StepProfiler:
    """Starts a trace before step `first` and stops it once step `last` has run.

    Args:
      steps: `(first, last)`, 1-based and inclusive; empty: no trace.
      workdir: the trace goes to `<workdir>/plugins/profile`; None: no trace.
      enabled: whether this worker traces (the chief only).
    """

    def __init__(self, steps: tuple[int, ...], workdir: str | None, *, enabled: bool):
        self.first, self.last = steps if steps else (0, 0)
        self.configured = bool(steps)
        self.active = self.configured and bool(workdir) and enabled
        self.workdir = workdir
        self.done = False

    def bounds(self, step: int) -> list[int]:
        """Steps from `step` to where a compiled call must end so the trace covers just the range.

        The same on every worker (it does not depend on `enabled`): all cut the epoch alike.
        """
        if not self.configured:
            return []
        return [b for b in (self.first - 1 - step, self.last - step) if b > 0]

    def before_call(self, step: int) -> None:
        """Starts the trace when the next call begins with step `first`."""
        if self.active and step == self.first - 1:
            tf.profiler.experimental.start(self.workdir)

    def after_call(self, step: int) -> None:
        """Stops the trace once step `last` has run (`step`: steps completed)."""
        if self.active and not self.done and self.first - 1 < step and step >= self.last:
            tf.profiler.experimental.stop()
            self.done = True
            logging.info("Profiled steps %d-%d into %s/plugins/profile.", self.first, self.last, self.workdir)
