"""A trainer's counters: the global step and the record of non-finite steps.

`StepCounters` is a component of `framework.Trainer`, made under the
strategy's scope. Its variables are the same on every replica (the first
replica's value is kept); the step is the checkpoint's "trainer" group
(`framework.trainer.variables`).
"""

from __future__ import annotations

import tensorflow as tf


def _counter(name: str, initial: int) -> tf.Variable:
    return tf.Variable(
        initial,
        dtype=tf.int64,
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class StepCounters:
    """The step counter and the non-finite step record, as variables the compiled steps update.

    Attributes:
      step: training steps completed (the global step).
      nonfinite_step: the step (1-based) whose loss or gradients were
        non-finite since the last clear; -1: none.
      nonfinite_count: non-finite steps so far (logged under `nan_policy` "skip").
    """

    def __init__(self):
        self.step = _counter("step", 0)
        self.nonfinite_step = _counter("nonfinite_step", -1)
        self.nonfinite_count = _counter("nonfinite_count", 0)

    def record_nonfinite(self) -> None:
        """Marks the step being run as non-finite (in replica context, on every replica alike)."""
        self.nonfinite_step.assign(self.step + 1)
        self.nonfinite_count.assign_add(1)
