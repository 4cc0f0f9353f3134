"""How `fit()` cuts a run into periods: epochs, or the evaluation intervals of a step-based run.

Epoch mode (`config.train_steps = 0`): `config.epochs` periods of one pass
over the training data (or `config.steps_per_epoch` steps) each. With
`steps_per_epoch` set, an epoch is not a pass (`reads_on`): each epoch reads
on where the previous one stopped, and a finite dataset starts its next pass
when it runs out, as in Keras' `fit(steps_per_epoch=...)`.

Step mode (`config.train_steps = N`): N optimizer updates, i.e. N *
`grad_accum_steps` train steps, drawn from one iterator that runs on across
periods. A period ends every `config.eval_every_steps` updates and at the
run's end (the last period is shorter when N is not a multiple). At a
period's end the controller does what it does at an epoch's end: evaluation,
Keras' `on_epoch_end`, a checkpoint and the `epoch` record; train metrics
reset when the next period starts. A finite dataset is cycled: repeated, so a
`reshuffle_each_iteration` shuffle reshuffles on every pass.

In step mode a period's position is a function of the step alone
(`Periods.position`), so a rerun with a larger `train_steps` (or another
`eval_every_steps`) continues from the checkpoint's step.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import ml_collections
import tensorflow as tf
from absl import logging

_FITTED_SCHEDULES = ("cosine", "warmup_cosine")


@dataclasses.dataclass(frozen=True)
class Periods:
    """The periods of one `fit()`.

    step_based: counted in steps (`config.train_steps`) rather than epochs.
    length: train steps (`Trainer.step` counts) in a full period.
    count: periods in the run.
    total: train steps in the run.
    updates: optimizer updates in the run: the horizon of a `decay_steps = 0` schedule.
    """

    step_based: bool
    length: int
    count: int
    total: int
    updates: int

    def steps_in(self, period: int) -> int:
        """Train steps of period `period` (0-based); the last one of a step-based run may be shorter."""
        return max(0, min(self.length, self.total - period * self.length))

    def finished(self, step: int, epoch: int) -> bool:
        """Whether a run at `step`, `epoch` periods done, has nothing left to train."""
        return step >= self.total if self.step_based else epoch >= self.count

    def position(self, step: int) -> tuple[int, int]:
        """(periods done, steps into the current period) of a step-based run at `step`."""
        return divmod(step, self.length)


def period_steps(config: ml_collections.ConfigDict) -> int:
    """Train steps per period of a step-based run (its input's steps per "epoch"); 0 in epoch mode.

    Args:
      config: the run's resolved config.

    Returns:
      `eval_every_steps` (or `train_steps` when 0) updates in train steps;
      `debug.fast_dev_run` when set; 0 for an epoch-based run.
    """
    if not config.train_steps:
        return 0
    if config.debug.fast_dev_run:
        return config.debug.fast_dev_run
    every = min(config.eval_every_steps or config.train_steps, config.train_steps)
    return every * config.grad_accum_steps


def reads_on(config: ml_collections.ConfigDict) -> bool:
    """Whether an epoch-based run's epochs read on through a finite dataset (see docs/input.md).

    Args:
      config: the run's resolved config.

    Returns:
      True with `steps_per_epoch` set in epoch mode, unless a debug limit
      (`fast_dev_run`, `limit_train_steps`, `overfit_batches`) is set: those
      start every epoch at the data's start.
    """
    debug = config.debug
    limited = debug.fast_dev_run or debug.limit_train_steps or debug.overfit_batches
    return bool(not config.train_steps and config.steps_per_epoch and not limited)


def log_reading_on(name: str, steps_per_epoch: int, pass_steps: int) -> None:
    """Says (INFO) that epochs of `steps_per_epoch` read on through input `name`, of `pass_steps` (0: unknown)."""
    length = f"{pass_steps} steps per pass" if pass_steps else "a finite dataset of unknown length"
    logging.info(
        "config.steps_per_epoch=%d and %s() yields %s: an epoch is not a pass. Each epoch reads on "
        "where the previous one stopped, and when the data runs out the next pass starts (reshuffled "
        "if the dataset reshuffles each iteration), as in Keras' fit(steps_per_epoch=...).",
        steps_per_epoch,
        name,
        length,
    )


def plan(config: ml_collections.ConfigDict, input_steps: int) -> Periods:
    """The run's periods, once its training input is built.

    Args:
      config: the run's resolved config.
      input_steps: the training input's steps per period (`DistributedInput.steps`,
        after the debug limits).

    Returns:
      Epoch mode: `config.epochs` periods of `input_steps` (one with
      `debug.fast_dev_run`; with `debug.limit_train_steps`, as many as that
      many steps need, the last one cut short). Step mode: `train_steps *
      grad_accum_steps` steps (`debug.fast_dev_run` steps, or at most
      `debug.limit_train_steps`) in periods of `input_steps`.
    """
    accum = config.grad_accum_steps
    limit = config.debug.limit_train_steps
    if not config.train_steps:
        epochs = 1 if config.debug.fast_dev_run else config.epochs
        total = epochs * input_steps
        if limit and not config.debug.fast_dev_run and total > limit:
            total, epochs = limit, -(-limit // input_steps)
        return Periods(False, input_steps, epochs, total, total // accum)
    total = config.train_steps * accum
    if config.debug.fast_dev_run:
        total = input_steps
    elif limit:
        total = min(total, limit)
    return Periods(True, input_steps, -(-total // input_steps), total, total // accum)


def rerun_note(
    previous: dict | None, config: ml_collections.ConfigDict, step: int
) -> tuple[str, bool] | None:
    """What a rerun that changed `train_steps` does, for the log; None when it changed nothing.

    A `decay_steps = 0` schedule's horizon is the run's updates as the config
    now says: a longer run stretches the schedule, so from the checkpoint on the
    learning rate is the longer schedule's.

    Args:
      previous: the config the workdir recorded (`runconfig.load`), or None.
      config: the config of this run.
      step: the step the run resumed at.

    Returns:
      The note, and whether it is a warning (the learning rate changes).
    """
    before, now = (previous or {}).get("train_steps", 0), config.train_steps
    if not (before and now) or before == now or not step:
        return None
    note = f"config.train_steps changed from {before} to {now}: the run goes on from step {step}"
    opt = config.optimizer
    stretched = opt.schedule in _FITTED_SCHEDULES and not opt.decay_steps
    if stretched:
        note += (
            f"; the {opt.schedule} schedule (decay_steps=0) now spans {now} updates instead of "
            f"{before}, so the learning rate from here on follows the longer schedule. Set "
            f"config.optimizer.decay_steps to fix its length"
        )
    return note + ".", stretched


@contextlib.contextmanager
def values_kept(variables: Sequence[tf.Variable], strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Gives `variables` back the values they had on entry, on every local device.

    The copies are per device (a metric's replica-local parts), so no
    collective is issued: workers need not agree on when this runs.
    """
    kept = [(part, part.numpy()) for v in variables for part in strategy.experimental_local_results(v)]
    try:
        yield
    finally:
        for part, value in kept:
            part.assign(value)
