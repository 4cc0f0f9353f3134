"""A trainer's train and eval metrics, and which of them its steps feed.

`PhaseMetrics` is a component of `framework.Trainer`: `update_metrics` feeds
the metrics of the phase a step is traced in; eval steps trace and run
inside `evaluating()` (entered by the compiled steps' `eval_phase`).
"""

from __future__ import annotations

import contextlib

from framework import metrics


class PhaseMetrics:
    """The (head, metric) pairs of each phase and the phase being traced.

    Args:
      train: the pairs train steps feed (`build_metrics`).
      eval: the pairs eval steps feed (`build_eval_metrics`; may be `train` itself).
    """

    def __init__(self, train: metrics.Pairs, eval: metrics.Pairs):
        self.train = train
        self.eval = eval
        self._phase = "train"

    def of(self, phase: str | None = None) -> metrics.Pairs:
        """The pairs of `phase` ("train" or "eval"); None: of the phase being traced."""
        return self.eval if (phase or self._phase) == "eval" else self.train

    def unbuilt(self) -> metrics.Pairs:
        """The pairs of both phases whose metrics have no variables yet."""
        return [p for p in self.train + self.eval if not p[1].variables]

    @contextlib.contextmanager
    def evaluating(self):
        """Steps traced in here feed the eval metrics."""
        self._phase = "eval"
        try:
            yield
        finally:
            self._phase = "train"
