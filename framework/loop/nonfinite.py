"""What a run does after a non-finite step (`config.nan_policy`).

A step is non-finite when its loss, or without loss scaling its gradients,
is not finite on any replica; the flag rides along the gradient all-reduce
(`framework.optim.updates`), so every worker sees the same step, takes the same
branch here and issues the same collectives in the same order. The compiled
train function never applies such an update, and unless the policy is "skip"
it ends the call after that step. Then:

* "raise": `FloatingPointError` naming the step and its non-finite loss terms
  (or the gradients); the weights hold the values from before that step.
* "skip": a warning, and training goes on; the call ran all its steps and its
  log sums count.
* "restore": the latest checkpoint is loaded and training goes on from the
  batch after the offending one; the call's log sums are dropped (they hold
  the offending step's values). After `config.nan_max_retries` restores, it
  raises as "raise" does. The Controller makes sure a checkpoint exists
  before the first step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from absl import logging

from framework import distribute
from framework.checkpointing import checkpoint
from framework.loop.runner import Runner


def _describe(runner: Runner, key: str, value: float) -> str:
    term = runner.loss_term_of(key)
    return f"{key}={value} (term {term!r})" if term else f"{key}={value}"


class NonFinitePolicy:
    """Applies `config.nan_policy` after each compiled train call.

    Args:
      runner: the runner whose non-finite status is read and cleared, and whose
        state a restore loads.
      open_checkpoints: returns the run's checkpoints, opened for writing
        (called only under "restore").

    Attributes:
      restores: checkpoints restored so far under "restore".
    """

    def __init__(self, runner: Runner, open_checkpoints: Callable[[], checkpoint.Checkpoints]):
        self.runner = runner
        self.open_checkpoints = open_checkpoints
        self.restores = 0
        self._skipped = False

    def take_skipped(self) -> bool:
        """Whether a call skipped a non-finite step (under "skip") since this was last asked."""
        skipped, self._skipped = self._skipped, False
        return skipped

    def after_call(
        self, step: int, n: int, last: Mapping[str, float], bad: int | None = None
    ) -> tuple[int, bool]:
        """Applies the policy after a call of `n` steps that started at global step `step`.

        Args:
          step: the global step before the call.
          n: the steps the call was asked to run.
          last: the log values the call returned with its sums (a non-finite
            step's loss terms when it stopped on one).
          bad: the runner's non-finite step as the call read it at its end
            (-1: none); None: read it from the runner.

        Returns:
          How many steps the call ran (after a restore: up to the offending
          one), and whether its log sums count (not after a restore).

        Raises:
          FloatingPointError: a non-finite step under "raise", or under
            "restore" past `config.nan_max_retries` restores.
        """
        runner, config = self.runner, self.runner.config
        bad = runner.nonfinite_step() if bad is None else bad
        if bad < 0:
            return n, True
        terms = [_describe(runner, k, v) for k, v in last.items() if not math.isfinite(v)]
        what = (
            f"loss at step {bad}: {', '.join(terms)}"
            if terms
            else f"gradients at step {bad} (the loss was finite)"
        )
        policy = config.nan_policy
        if policy == "skip":
            logging.warning("Non-finite %s; the update was skipped (nan_policy='skip').", what)
            runner.clear_nonfinite()
            self._skipped = True
            return n, True
        if policy == "restore" and self.restores < config.nan_max_retries:
            self.restores += 1
            ckpts = self.open_checkpoints()
            ckpts.wait()  # a save of the last good step may still be in flight
            distribute.any_worker(runner.strategy, False)  # ... on the chief: the others read it after this
            latest = ckpts.steps()[-1]
            ckpts.restore(runner.checkpoint_state(), latest)
            runner.set_step(bad)  # go on from the batch after the offending one
            runner.clear_nonfinite()
            logging.warning(
                "Non-finite %s; restored checkpoint %d and continued after that batch (%d/%d).",
                what,
                latest,
                self.restores,
                config.nan_max_retries,
            )
            return bad - step, False
        gave_up = f" Gave up after {self.restores} restores." if policy == "restore" else ""
        raise FloatingPointError(
            f"Non-finite {what}. The update was skipped; the weights hold the values before that step.{gave_up}"
        )
