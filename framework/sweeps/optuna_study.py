"""The Optuna study a search shares with its trial processes; needs no TensorFlow.

The sweep process (`framework.sweeps.search`) creates the study in a journal file,
`<workdir>/optuna.journal`; each trial process (`framework.sweeps.pruning`) opens it
again and finds its trial by number in the `FRAMEWORK_OPTUNA_TRIAL`
environment variable. Only Optuna's public API is used. Optuna is optional:
`pip install optuna` (or the `[sweeps]` extra).
"""

from __future__ import annotations

import os

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
            "(or pip install -e '.[sweeps]')."
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


def open_trial(spec: dict):
    """The running trial `spec["number"]` of the sweep in `spec["workdir"]`, in a trial process.

    Args:
      spec: the sweep's `TRIAL_ENV` value: workdir, number, pruner, startup_trials (and monitor).

    Returns:
      An `optuna.trial.Trial` to report to; its storage id comes from the storage's public lookups
      by study name and trial number.
    """
    optuna = import_optuna()
    journal = storage(spec["workdir"])
    study = optuna.load_study(
        study_name=STUDY, storage=journal, pruner=make_pruner(spec["pruner"], spec["startup_trials"])
    )
    study_id = journal.get_study_id_from_name(STUDY)
    return optuna.trial.Trial(
        study, journal.get_trial_id_from_study_id_trial_number(study_id, spec["number"])
    )
