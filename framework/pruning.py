"""Optuna trials in their own processes: the pruning callback and the study they share.

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

from framework import config as config_lib

TRIAL_ENV = "FRAMEWORK_OPTUNA_TRIAL"  # set by the sweep for its trial processes
JOURNAL = "optuna.journal"
STUDY = "sweep"


def import_optuna():
    """The optuna module, or a ConfigError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise config_lib.ConfigError(
            "--search=optuna needs Optuna, which is not installed: pip install optuna "
            "(or pip install -e '.[test]')."
        ) from None
    return optuna


def make_pruner(name: str, startup_trials: int):
    """'median': prune a trial below the median of earlier ones at the same evaluation; 'none'."""
    optuna = import_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise config_lib.ConfigError(f"--pruner={name!r} is not one of median, none.")


def storage(workdir: str):
    """The journal file of the sweep in `workdir`, shared by the sweep and its trial processes."""
    optuna = import_optuna()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(os.path.join(workdir, JOURNAL)))


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
    optuna = import_optuna()
    study = optuna.load_study(
        study_name=STUDY,
        storage=storage(spec["workdir"]),
        pruner=make_pruner(spec["pruner"], spec["startup_trials"]),
    )
    return [OptunaPruning(optuna.trial.Trial(study, spec["trial_id"]), spec["monitor"], finish_pruned=True)]
