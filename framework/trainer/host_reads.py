"""What the host loop reads and sets on a trainer between compiled calls.

`HostReads` is a component of `framework.Trainer`: the step counter, metric
results and resets, optimizer logs, the non-finite step, schedule lengths
(`framework.loop.runner.Runner`), and `after_train_call`, the same reads as
tensors, which each compiled train call evaluates after its last step so that
a log point needs no eager reads (`framework.loop`).
"""

from __future__ import annotations

import contextlib

import ml_collections
import numpy as np
import tensorflow as tf

from framework import metrics
from framework.optim import optimizer_builder, updates
from framework.trainer.counters import StepCounters
from framework.trainer.phase_metrics import PhaseMetrics


class HostReads:
    """Host-side reads and writes of a trainer's counters, metrics and optimizers.

    Args:
      strategy: the trainer's strategy (metrics are read across its replicas).
      config: the run config (`nan_policy`).
      counters: the trainer's step and non-finite counters.
      updater: the updater of the trainer's optimizers.
      phase_metrics: the trainer's train and eval metrics.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        config: ml_collections.ConfigDict,
        counters: StepCounters,
        updater: updates.Updater,
        phase_metrics: PhaseMetrics,
    ):
        self._strategy = strategy
        self._config = config
        self._counters = counters
        self._updater = updater
        self._metrics = phase_metrics

    @property
    def step(self) -> int:
        """Training steps completed (the global step), read on the host."""
        return int(self._counters.step.numpy())

    def metric_results(self, phase: str = "train") -> dict[str, float]:
        """The train (or eval) metrics' values, summed over replicas; a collective every worker must call."""
        return metrics.read(self._metrics.of(phase), self._strategy)

    def reset_metrics(self, phase: str = "train") -> None:
        """Resets the train (or "eval") metrics."""
        metrics.reset(self._metrics.of(phase))

    def set_step(self, step: int) -> None:
        """Sets the global step."""
        self._counters.step.assign(step)

    def nonfinite_step(self) -> int:
        """The step whose loss or gradients were non-finite since the last clear; -1: none."""
        return int(self._counters.nonfinite_step.numpy())

    def clear_nonfinite(self) -> None:
        """Forgets the non-finite step: the compiled train function goes on."""
        self._counters.nonfinite_step.assign(-1)

    def optimizer_logs(self) -> dict[str, float]:
        """`lr` (`lr/<name>` for added optimizers), the updater's logs, and `nonfinite_steps` under "skip"."""
        return {key: float(np.asarray(value, np.float64)) for key, value in self._optimizer_values().items()}

    def _optimizer_values(self) -> dict[str, tf.Tensor]:
        out = {}
        for i, (name, optimizer) in enumerate(self._updater.named_optimizers()):
            out["lr" if i == 0 else f"lr/{name}"] = tf.convert_to_tensor(optimizer.learning_rate)
        out.update(self._updater.logs())
        if self._config.nan_policy == "skip":
            out["nonfinite_steps"] = tf.convert_to_tensor(self._counters.nonfinite_count)
        return out

    def after_train_call(self) -> dict:
        """What the host reads after each train call, as tensors: the compiled call reads them itself.

        Keys: "optimizer" (`optimizer_logs()`'s), "nonfinite_step" and "metrics"
        (`metric_results()`'s; left out when a metric cannot be read in a graph).
        """
        with self._strategy.scope():
            nonfinite = tf.convert_to_tensor(self._counters.nonfinite_step)
            out = {"optimizer": self._optimizer_values(), "nonfinite_step": nonfinite}
            # A metric a graph cannot read (Python in its result) is read on the host instead.
            with contextlib.suppress(Exception):
                out["metrics"] = metrics.results(self._metrics.train)
        return out

    def fit_schedules(self, total_updates: int) -> None:
        """Sets the length of `decay_steps = 0` schedules to the run's `total_updates`."""
        for _, optimizer in self._updater.named_optimizers():
            optimizer_builder.fit_schedule(optimizer, total_updates)
