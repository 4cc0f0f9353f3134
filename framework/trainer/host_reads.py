"""What the host loop reads and sets on a trainer between compiled calls.

`HostReads` is a base of `framework.Trainer`: the step counter, metric
results and resets, optimizer logs, the non-finite step, schedule lengths
(`framework.loop.runner.Runner`), and `after_train_call`, the same reads as
tensors, which each compiled train call evaluates after its last step so that
a log point needs no eager reads (`framework.loop`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from framework import metrics
from framework.optim import optimizer_builder


class HostReads:
    """Host-side reads and writes of a trainer's counters, metrics and optimizers.

    Reads what `Trainer.__init__` sets: the strategy, config, metrics, the step
    and non-finite counters and the updater of its optimizers.
    """

    @property
    def step(self) -> int:
        """Training steps completed (the global step), read on the host."""
        return int(self._step.numpy())

    def metric_results(self, phase: str = "train") -> dict[str, float]:
        """Current values of the train (or eval) metrics, summed over replicas, read on the host.

        Every worker must call it alike: reading a metric is a collective.

        Args:
          phase: "train" or "eval".

        Returns:
          Metric name -> value; vector results give `name/<i>`, dict results `name/<key>`.
        """
        return metrics.read(self._phase_metrics(phase), self.strategy)

    def reset_metrics(self, phase: str = "train") -> None:
        """Resets the train (or "eval") metrics; the Controller does it at each epoch and evaluation."""
        metrics.reset(self._phase_metrics(phase))

    def set_step(self, step: int) -> None:
        """Sets the global step (a restore that goes on after an offending batch)."""
        self._step.assign(step)

    def nonfinite_step(self) -> int:
        """The step whose loss or gradients were non-finite since the last clear; -1: none."""
        return int(self._nonfinite_step.numpy())

    def clear_nonfinite(self) -> None:
        """Forgets the non-finite step: the compiled train function goes on."""
        self._nonfinite_step.assign(-1)

    def loss_term_of(self, key: str) -> str | None:
        """The term a loss log holds when its loss has one term (its logs then name no term); else None."""
        return self._single_term_logs.get(key)

    def optimizer_logs(self) -> dict[str, float]:
        """`lr` (`lr/<name>` for added optimizers), the updater's logs, and `nonfinite_steps` under "skip"."""
        return {key: float(np.asarray(value, np.float64)) for key, value in self._optimizer_values().items()}

    def _optimizer_values(self) -> dict[str, tf.Tensor]:
        out = {}
        for i, (name, optimizer) in enumerate(self._updater.named_optimizers()):
            out["lr" if i == 0 else f"lr/{name}"] = tf.convert_to_tensor(optimizer.learning_rate)
        out.update(self._updater.logs())
        if self.config.nan_policy == "skip":
            out["nonfinite_steps"] = tf.convert_to_tensor(self._nonfinite_count)
        return out

    def after_train_call(self) -> dict:
        """What the host reads after each train call, as tensors: the compiled call reads them itself.

        Keys: "optimizer" (`optimizer_logs()`'s), "nonfinite_step" and "metrics"
        (`metric_results()`'s; left out when a metric cannot be read in a graph).
        """
        with self.strategy.scope():
            nonfinite = tf.convert_to_tensor(self._nonfinite_step)
            out = {"optimizer": self._optimizer_values(), "nonfinite_step": nonfinite}
            # A metric a graph cannot read (Python in its result) is read on the host instead.
            with contextlib.suppress(Exception):
                out["metrics"] = metrics.results(self.metrics)
        return out

    def fit_schedules(self, total_updates: int) -> None:
        """Sets the length of `decay_steps = 0` schedules to the run's `total_updates`."""
        for _, optimizer in self._updater.named_optimizers():
            optimizer_builder.fit_schedule(optimizer, total_updates)
