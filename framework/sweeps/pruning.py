"""Optuna trials in their own processes: the pruning callback (the study: `framework.sweeps.optuna_study`).

A trial process started by `scripts/sweep.py --search=optuna` finds its trial
in the `FRAMEWORK_OPTUNA_TRIAL` environment variable (like TF_CONFIG for a
worker); `trial_callbacks()` then gives the launcher an `OptunaPruning` that
reports the monitored `val/` metric after each evaluation and stops training
when the study's pruner says so. Optuna is optional: `pip install optuna`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import keras
from absl import logging

from framework.sweeps.optuna_study import JOURNAL as JOURNAL
from framework.sweeps.optuna_study import STUDY as STUDY
from framework.sweeps.optuna_study import TRIAL_ENV as TRIAL_ENV
from framework.sweeps.optuna_study import import_optuna, open_trial
from framework.sweeps.optuna_study import make_pruner as make_pruner
from framework.sweeps.optuna_study import storage as storage


class OptunaPruning(keras.callbacks.Callback):
    """Reports `monitor` to an Optuna trial after each evaluation; stops training if it is pruned.

    Also usable in a hand-written objective: `trainer.fit(callbacks=[cb])`, then
    `if cb.pruned: raise optuna.TrialPruned()`.

    Args:
      trial: an `optuna.trial.Trial`.
      monitor: a logged evaluation key, e.g. "val/accuracy".
      finish_pruned: mark the trial pruned in the study here (a trial process, whose sweep asked
        for the trial); in `study.optimize` the objective raises `optuna.TrialPruned` instead.
    """

    def __init__(self, trial, monitor: str, *, finish_pruned: bool = False):
        super().__init__()
        if not monitor.startswith("val/"):
            raise ValueError(f"OptunaPruning: monitor must be a val/ key, got {monitor!r}.")
        self.trial, self.monitor, self.finish_pruned, self.pruned = trial, monitor, finish_pruned, False

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        value = (logs or {}).get("val_" + self.monitor[len("val/") :])
        if value is None:
            return  # no evaluation after this epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            logging.info(
                "Optuna pruned trial %d at epoch %d (%s=%.6g).", self.trial.number, epoch, self.monitor, value
            )
            self.pruned = True
            self.model.stop_training = True
            if self.finish_pruned:
                self.trial.study.tell(self.trial.number, state=import_optuna().trial.TrialState.PRUNED)


def trial_callbacks() -> list:
    """In a trial process started by the sweep: its `OptunaPruning`; elsewhere none."""
    spec = os.environ.get(TRIAL_ENV)
    if not spec:
        return []
    spec = json.loads(spec)
    return [OptunaPruning(open_trial(spec), spec["monitor"], finish_pruned=True)]
