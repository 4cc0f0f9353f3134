"""Sweeps: a config file's `get_sweep(arg)` points, checked, named, and run as separate processes.

Each run is `python <script> --config=<spec> --workdir=<sweep>/<name> --config.k=v ...`,
its output in `<name>/run.log`, its state in `<name>/sweep.json` ("running", "done",
"failed", "interrupted" or "pruned"). A rerun skips done and pruned runs; the others
start again in their workdir, where training resumes from the latest checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections

from framework import config as config_lib
from framework.config import command_line, sweep_space

STATUS_FILE = "sweep.json"
LOG_FILE = "run.log"
FINISHED = ("done", "pruned")
FLAG_TYPES = (bool, int, float, str, tuple, list)


def load_config_module(spec: str):
    """The module of `path.py[:arg]` (a config file, or a one-file script) and its `arg`."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise config_lib.ConfigError(f"--config={spec}: no such config file {path!r}.")
    module_spec = importlib.util.spec_from_file_location("_framework_sweep_config", path)
    module = importlib.util.module_from_spec(module_spec)
    directory = os.path.dirname(os.path.abspath(path))
    added = directory not in sys.path
    if added:  # a script imports its neighbours as it would when run
        sys.path.insert(0, directory)
    try:
        module_spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(directory)
    if not hasattr(module, "get_config"):
        raise config_lib.ConfigError(f"{path} defines no get_config(): give --config=<config file>.")
    return module, arg


def load(spec: str, sweep_arg: str | None = None) -> tuple[ml_collections.ConfigDict, Any]:
    """The config of `spec` and its file's `get_sweep(sweep_arg)` (default: the config's arg).

    Raises:
      ConfigError: the file has no `get_sweep`, or it returns neither a list of dicts nor a dict.
    """
    module, arg = load_config_module(spec)
    config = module.get_config(arg) if arg else module.get_config()
    if not hasattr(module, "get_sweep"):
        raise config_lib.ConfigError(
            f"{spec.partition(':')[0]} defines no get_sweep(arg): add one returning a list of override "
            "dicts, e.g. framework.config.product({'optimizer.learning_rate': [1e-3, 3e-3]})."
        )
    sweep_arg = arg if sweep_arg is None else sweep_arg
    sweep = module.get_sweep(sweep_arg) if sweep_arg else module.get_sweep()
    if isinstance(sweep, Mapping):
        return config, dict(sweep)
    if isinstance(sweep, (list, tuple)) and sweep and all(isinstance(p, Mapping) for p in sweep):
        return config, [dict(p) for p in sweep]
    raise config_lib.ConfigError(
        f"get_sweep({sweep_arg!r}) must return a non-empty list of override dicts (a grid) or one dict "
        f"of ranges (a search); got {sweep!r:.200}."
    )


def flag_value(value: Any) -> str:
    """`value` as the text of a `--config.key=` flag."""
    return value if isinstance(value, str) else repr(value)


def apply(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str
) -> ml_collections.ConfigDict:
    """A copy of `config` with `overrides` set, checked like `--config.key=` flags and `resolve()`.

    Raises:
      ConfigError: naming `where` and the key: unknown (with "did you mean"), wrong type or bad value.
    """
    out = copy.deepcopy(config)
    for path, value in overrides.items():
        if isinstance(value, sweep_space.Range):
            raise config_lib.ConfigError(
                f"{where}: {path} is a range; a grid needs values (or --search=optuna)."
            )
        if value is not None and not isinstance(value, FLAG_TYPES):
            raise config_lib.ConfigError(f"{where}: {path}={value!r} cannot be passed as a --config flag.")
        try:
            command_line.check_override(out, path)
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(f"{where}: {e}") from None
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node[part]
        try:
            node[leaf] = tuple(value) if isinstance(value, list) else value
        except (TypeError, ValueError) as e:
            raise config_lib.ConfigError(
                f"{where}: config.{path}={value!r} has the wrong type: {e}"
            ) from None
    try:
        config_lib.resolve(out)
    except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"{where}: {e}") from None
    return out


def _format(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_format(v) for v in value) or "none"
    return str(value)


def run_names(points: list[dict[str, Any]]) -> list[str]:
    """Directory names from the overrides: `learning_rate=0.001,seed=0` (full keys if the last parts clash).

    Raises:
      ConfigError: two points give the same name (a repeated point).
    """
    keys = list(dict.fromkeys(k for p in points for k in p))
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
    names, seen = [], {}
    for i, point in enumerate(points):
        name = ",".join(f"{short[k]}={_format(v)}" for k, v in point.items()) or "default"
        name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
        if len(name) > 120:
            name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
        if name in seen:
            raise config_lib.ConfigError(f"sweep points {seen[name]} and {i} are the same point: {name}.")
        seen[name] = i
        names.append(name)
    return names


@dataclasses.dataclass
class Run:
    """One point of a sweep: its overrides and workdir."""

    name: str
    overrides: dict[str, Any]
    workdir: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def log(self) -> str:
        return os.path.join(self.workdir, LOG_FILE)

    def state(self) -> dict[str, Any]:
        path = os.path.join(self.workdir, STATUS_FILE)
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def save_state(self, **updates: Any) -> dict[str, Any]:
        state = {**self.state(), "overrides": self.overrides, **updates}
        os.makedirs(self.workdir, exist_ok=True)
        tmp = os.path.join(self.workdir, STATUS_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2, default=str)
        os.replace(tmp, os.path.join(self.workdir, STATUS_FILE))
        return state


def plan(workdir: str, points: list[dict[str, Any]]) -> list[Run]:
    """One `Run` per point, in `workdir/<name>`."""
    return [Run(name, point, os.path.join(workdir, name)) for name, point in zip(run_names(points), points)]


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(config_lib.__file__)))


class Runner:
    """Runs sweep points as subprocesses of `script`, `parallel` at a time.

    Args:
      script: the experiment script, ending with `framework.run(TrainerClass)`.
      config_spec: its `--config=` value; None: the script's own `get_config()` (no `--config` flag).
      flags: further flags for every run (`--mode=...`, `--config.key=value`).
      parallel: how many runs at once.
      on_exit: `fn(run, returncode) -> status` deciding a finished run's status (default: done or failed).
    """

    def __init__(
        self,
        script: str,
        config_spec: str | None,
        flags: Iterable[str] = (),
        parallel: int = 1,
        on_exit: Callable[[Run, int], str] | None = None,
    ):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}.")
        if not os.path.exists(script):
            raise FileNotFoundError(f"no such experiment script: {script}")
        self.script, self.config_spec, self.flags = script, config_spec, list(flags)
        self.parallel = parallel
        self.on_exit = on_exit or (lambda run, code: "done" if code == 0 else "failed")

    def command(self, run: Run) -> list[str]:
        overrides = [f"--config.{k}={flag_value(v)}" for k, v in run.overrides.items()]
        return [
            sys.executable,
            self.script,
            *([f"--config={self.config_spec}"] if self.config_spec else []),
            f"--workdir={run.workdir}",
            *self.flags,
            *overrides,
        ]

    def _start(self, run: Run) -> tuple[subprocess.Popen, float]:
        state = run.save_state(status="running", attempts=run.state().get("attempts", 0) + 1)
        command = self.command(run)
        path = os.environ.get("PYTHONPATH", "")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_repo_root(), path) if p), **run.env}
        with open(run.log, "a") as log:
            log.write(f"=== attempt {state['attempts']}: {' '.join(command)}\n")
            log.flush()
            # Its own session: a terminal's Ctrl-C reaches only the sweep, which stops runs with SIGTERM.
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        print(f"[start] {run.name}  (log: {run.log})", flush=True)
        return process, time.perf_counter()

    def _finish(self, run: Run, code: int, started: float, status: str | None = None) -> None:
        status = status or self.on_exit(run, code)
        wall = run.state().get("wall_seconds", 0.0) + time.perf_counter() - started
        run.save_state(status=status, returncode=code, wall_seconds=round(wall, 2))
        print(
            f"[{status}] {run.name}" + (f"  exit {code}, see {run.log}" if status == "failed" else ""),
            flush=True,
        )

    def run(self, runs: Iterable[Run]) -> None:
        """Runs each run not finished before; SIGINT/SIGTERM stop the running ones (they checkpoint).

        Raises:
          KeyboardInterrupt: the sweep was interrupted (the running runs are marked "interrupted").
        """
        pending = iter(runs)
        running: dict[str, tuple[Run, subprocess.Popen, float]] = {}
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            exhausted = False
            while running or not exhausted:
                while not exhausted and len(running) < self.parallel:
                    run = next(pending, None)
                    if run is None:
                        exhausted = True
                    elif run.state().get("status") in FINISHED:
                        print(f"[skip] {run.name}: {run.state()['status']}", flush=True)
                    else:
                        running[run.name] = (run, *self._start(run))
                for name, (run, process, started) in list(running.items()):
                    if process.poll() is not None:
                        del running[name]
                        self._finish(run, process.returncode, started)
                if running:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            for _, process, _ in running.values():
                process.send_signal(signal.SIGTERM)  # the framework saves a checkpoint and exits
            for run, process, started in running.values():
                try:
                    code = process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait()
                self._finish(run, code, started, status="interrupted")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
