"""Hyperparameter search with Optuna: `scripts/sweep.py --search=optuna --trials=N`.

The sweep process samples each trial's overrides from the ranges `get_sweep`
declares (`framework.config.uniform`, `log_uniform`, `integers`, `choice`) and
runs it as a separate process, like a grid point, in `<workdir>/trial-NNN`.
The trial process reports the monitored `val/` metric at each evaluation
through `OptunaPruning` (a Keras callback) and stops early when the pruner
says so. Both share the study through a journal file, `<workdir>/optuna.journal`;
a trial's objective is its final monitored value. A rerun continues the study:
interrupted trials resume from their checkpoints, then new ones fill up to N.
Optuna is optional: `pip install optuna`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

from framework import config as config_lib
from framework.config import command_line, sweep_space
from framework.outputs import metrics_file
from framework.sweeps import processes, results
from framework.sweeps.optuna_study import STUDY, TRIAL_ENV, import_optuna, make_pruner, storage


def _suggest(trial, space: Mapping[str, Any]) -> dict[str, Any]:
    point = {}
    for key, dim in space.items():
        if not isinstance(dim, sweep_space.Range):
            point[key] = dim
        elif dim.kind == "float":
            point[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        elif dim.kind == "int":
            point[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            point[key] = trial.suggest_categorical(key, list(dim.choices))
    return point


def check_space(config, space: Mapping[str, Any]) -> None:
    """Every bound and choice of `space` applied to `config`, like a grid point.

    Raises:
      ConfigError: the space declares no range, or a value the config rejects (naming the key).
    """
    if not any(isinstance(d, sweep_space.Range) for d in space.values()):
        raise config_lib.ConfigError(
            "--search=optuna: get_sweep's dict declares no range; use framework.config.uniform, "
            "log_uniform, integers or choice."
        )
    corner = {
        k: (d.choices[0] if d.kind == "choice" else d.low) if isinstance(d, sweep_space.Range) else d
        for k, d in space.items()
    }
    for key, dim in space.items():
        values = (
            [dim]
            if not isinstance(dim, sweep_space.Range)
            else (list(dim.choices) if dim.kind == "choice" else [dim.low, dim.high])
        )
        for value in values:
            if isinstance(dim, sweep_space.Range) and dim.kind == "int":
                value = int(value)
            command_line.apply_overrides(config, {**corner, key: value}, f"search space {key}={value!r}")


def _check_search(config, space: Any, monitor: str, flags: list[str]) -> None:
    """Raises ConfigError when `space` is no dict of ranges, `monitor` no val/ key, or a flag sets a searched key."""
    if not isinstance(space, dict):
        raise config_lib.ConfigError(
            "--search=optuna: get_sweep returned a list of points; a search needs one dict of ranges, e.g. "
            "{'optimizer.learning_rate': framework.config.log_uniform(1e-4, 1e-2)}."
        )
    if not metrics_file.is_val(monitor):
        raise config_lib.ConfigError(f"--search=optuna: --monitor must be a val/ key, got {monitor!r}.")
    check_space(config, space)
    for key in space.keys() & {override[0] for f in flags if (override := command_line.override_of(f))}:
        raise config_lib.ConfigError(f"--config.{key} is also set by the search space.")


def _open_study(optuna, args, mode: str):
    """The sweep's study in `args.workdir` (continued when it exists), with a sampler seeded for this run."""
    os.makedirs(args.workdir, exist_ok=True)
    study = optuna.create_study(
        study_name=STUDY,
        storage=storage(args.workdir),
        direction="maximize" if mode == "max" else "minimize",
        pruner=make_pruner(args.pruner, args.pruner_startup_trials),
        load_if_exists=True,
    )
    # A rerun continues the study: the seed as before would draw the same points again.
    study.sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials))
    return study


def run(args, flags: list[str], config, space: Any, monitor: str, mode: str) -> list[processes.Run]:
    """Runs the study's trials up to `args.trials`; returns every trial's `Run` for the summary.

    Args:
      args: scripts/sweep.py's flags: script, config, workdir, trials, parallel, pruner,
        pruner_startup_trials, seed.
      flags: flags for every trial process.
      config: the config, command-line overrides applied.
      space: get_sweep's dict: config key -> `framework.config.Range` or a fixed value.
      monitor: the `val/` key each trial reports and whose final value is the objective.
      mode: "max" or "min": the study's direction.

    Raises:
      ConfigError: Optuna is missing, `space` is not a dict of ranges, or `monitor` is not a val/ key.
    """
    optuna = import_optuna()
    _check_search(config, space, monitor, flags)
    study = _open_study(optuna, args, mode)
    child = {
        "workdir": os.path.abspath(args.workdir),
        "monitor": monitor,
        "pruner": args.pruner,
        "startup_trials": args.pruner_startup_trials,
    }
    runs: list[processes.Run] = []
    trial_ids: dict[str, int] = {}

    def make_run(number: int, overrides: dict) -> processes.Run:
        name = f"trial-{number:03d}"
        env = {TRIAL_ENV: json.dumps({**child, "number": number})}
        run = processes.Run(name, overrides, os.path.join(args.workdir, name), env)
        trial_ids[name] = number
        runs.append(run)
        return run

    def trials() -> Iterator[processes.Run]:
        running = optuna.trial.TrialState.RUNNING
        for frozen in study.get_trials(deepcopy=False):
            overrides = {
                **{k: v for k, v in space.items() if not isinstance(v, sweep_space.Range)},
                **frozen.params,
            }
            run = make_run(frozen.number, overrides)
            if frozen.state == running and run.state().get("status") == "done":
                on_exit(run, 0)  # finished, but the sweep stopped before recording it
            elif frozen.state == running:
                yield run  # interrupted: resumes from its checkpoint
        while len(study.get_trials(deepcopy=False)) < args.trials:
            trial = study.ask()
            yield make_run(trial.number, _suggest(trial, space))

    def on_exit(run: processes.Run, code: int) -> str:
        number = trial_ids[run.name]
        if study.get_trials(deepcopy=False)[number].state == optuna.trial.TrialState.PRUNED:
            return "pruned"
        value = results.run_result(run.workdir, monitor, mode)["final"].get(monitor)
        if code == 0 and value is not None and math.isfinite(value):
            study.tell(number, value)
            return "done"
        study.tell(number, state=optuna.trial.TrialState.FAIL)
        return "failed"

    print(f"Search: {args.trials} Optuna trials in {args.workdir}, {args.parallel} at a time.", flush=True)
    processes.Runner(args.script, args.config, flags, args.parallel, on_exit=on_exit).run(trials())
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        print(f"Best: trial-{best.number:03d} {monitor}={best.value:.6g} {best.params}", flush=True)
    return runs
