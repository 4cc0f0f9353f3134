"""`framework.run(TrainerClass)`: the absl entry point of a research script.

    python experiments/digits.py --config=configs/digits.py:smoke \
        --config.batch_size=128 --workdir=runs/digits --mode=train_and_eval

Modes: `train` (fit, no evaluation), `train_and_eval` (fit, evaluating every
`config.eval_every_epochs`), `eval` (evaluate `--checkpoint`: latest, best or
a step), `continuous_eval` (evaluate each new checkpoint once, until the final
one), `export` (a SavedModel of `--checkpoint` under workdir/export/<step>).
Training resumes from the workdir's latest checkpoint; `eval`, `continuous_eval`
and `export` start from the config the run recorded (`framework.outputs.recorded_config`),
with the command line's `--config.x=` overrides on top.

A one-file script defines `get_config()` beside its trainer: it is the config
when `--config` is absent, still overridable with `--config.x=`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import time
from collections.abc import Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from framework import config as config_lib
from framework.checkpointing import checkpoint
from framework.config import command_line
from framework.outputs import hparams, recorded_config
from framework.sweeps import optuna_study
from framework.trainer import modes

FLAGS = flags.FLAGS


_NEEDS_CONFIG = "--config is required: --config=configs/<name>.py[:variant], or a get_config() in the script"


def _define_flags(argv: Sequence[str], default: ml_collections.ConfigDict | None) -> None:
    """Defines `--config` (a file, or `default` when the script carries its config) and the others."""
    for name in [n for n in FLAGS if n == "config" or n.startswith("config.")]:
        delattr(FLAGS, name)  # run() again in this process, perhaps with another kind of config
    if default is None:
        config_flags.DEFINE_config_file(
            "config",
            None,
            "Config file: path.py or path.py:arg; override keys with --config.a.b=v.",
            lock_config=False,
            sys_argv=list(argv),  # its override flags are those of `argv`, not of sys.argv
        )
    else:
        config_flags.DEFINE_config_dict(
            "config",
            default,
            "The script's get_config(); override keys with --config.a.b=v.",
            lock_config=False,
            sys_argv=list(argv),
        )
    if "workdir" in FLAGS:
        return
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and summaries.")
    flags.DEFINE_enum("mode", "train_and_eval", list(config_lib.MODES), "What to run.")
    flags.DEFINE_string("checkpoint", "latest", "For eval/export: 'latest', 'best' or a step number.")
    flags.DEFINE_float(
        "eval_timeout_secs", 600.0, "continuous_eval stops after this long without a new checkpoint."
    )


def _load_config_file(spec: str) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_framework_config", path)
    if module_spec is None or not os.path.exists(path):
        raise config_lib.ConfigError(f"--config={spec}: no such config file {path!r}.")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _trial_callbacks() -> list:
    """A sweep's trial process gets its Optuna pruning callback; any other run imports no Optuna."""
    if not os.environ.get(optuna_study.TRIAL_ENV):
        return []
    from framework.sweeps import pruning

    return pruning.trial_callbacks()


def _script_config(argv: Sequence[str], get_config) -> ml_collections.ConfigDict | None:
    """The script's own config when `--config` is absent; None when a file is given or none exists."""
    if command_line.config_argument(argv) is not None:
        return None
    if get_config is None:
        get_config = getattr(sys.modules.get("__main__"), "get_config", None)
        if not callable(get_config):
            return None
    try:
        config = get_config()
        if not isinstance(config, ml_collections.ConfigDict):
            raise config_lib.ConfigError(
                f"get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}."
            )
        for path in command_line.override_paths(argv):
            command_line.check_override(config, path)
    except config_lib.ConfigError as e:
        _fatal(str(e))
    return config


def _explain(argv: Sequence[str], error: Exception, default: ml_collections.ConfigDict | None) -> str:
    """Turns a failed parse into a message naming the config key at fault."""
    spec = command_line.config_argument(argv)
    if spec is None and default is None:
        return _NEEDS_CONFIG
    try:
        base = _load_config_file(spec) if spec is not None else default
        for path in command_line.override_paths(argv):
            command_line.check_override(base, path)
    except config_lib.ConfigError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - the config file itself failed
        return f"--config={spec} failed to load: {type(e).__name__}: {e}"
    return str(error)


def _parse_flags(
    argv: Sequence[str], default: ml_collections.ConfigDict | None = None, added: dict | None = None
) -> list[str]:
    """absl's parser, with config errors reported by key before any work starts.

    added: path -> value of the flags that add keys to `optimizer.options` (`framework.config.command_line`).
    """
    FLAGS.unparse_flags()
    try:
        remaining = FLAGS(list(argv))
        if FLAGS.config is None:
            raise config_lib.ConfigError(_NEEDS_CONFIG)
        for path, value in (added or {}).items():
            command_line.set_path(FLAGS.config, path, value)
        config_lib.resolve(FLAGS.config)
    except config_lib.ConfigError as e:
        _fatal(str(e))
    except Exception as e:  # noqa: BLE001 - absl and ml_collections raise many kinds
        _fatal(_explain(argv, e, default))
    if not FLAGS.workdir:
        _fatal("--workdir is required.")
    return remaining


def _file_config_for_open_keys(argv: Sequence[str]) -> ml_collections.ConfigDict | None:
    """The `--config` file's config when some flag may add an `optimizer.options` key; else None (not loaded)."""
    spec = command_line.config_argument(argv)
    if spec is None or not any(map(command_line.in_open_section, command_line.override_paths(argv))):
        return None
    try:
        return _load_config_file(spec)
    except Exception:  # noqa: BLE001 - absl's own load reports it
        return None


def _fatal(message: str) -> None:
    sys.stderr.write(f"FATAL {message}\n")
    sys.exit(2)


def summary(trainer, results: dict, seconds: float, start_step: int | None) -> str:
    """The one screen a run ends with: final metrics, best checkpoint, time, speed."""
    lines = [f"Run summary ({FLAGS.mode}, {trainer.workdir})"]
    if start_step is not None:
        trained = trainer.step - start_step
        rate = f", {trained / seconds:.1f} steps/s" if trained else " (nothing left to train)"
        total = trainer.config.train_steps * trainer.config.grad_accum_steps
        where = f"/{total}" if total else ""
        epoch = "" if total else f", epoch {trainer.epoch}"
        lines.append(f"  steps: {trainer.step}{where} ({trained} this run){epoch}{rate}, wall {seconds:.1f}s")
    best = trainer.config.checkpoint.best_metric
    if best and trainer.workdir:
        ckpts = trainer.controller.open_checkpoints(writer=False)
        step = ckpts.best_step() if ckpts else None
        if step is not None:
            lines.append(f"  best checkpoint: step {step} ({best}={ckpts.metrics(step)[best]:.6g})")
    lines.append("Final metrics:")
    lines += [f"  {key:<32} {value:.6g}" for key, value in sorted(results.items())]
    return "\n".join(lines)


def _mode_config(mode: str, added: dict) -> ml_collections.ConfigDict:
    """Training uses the command line's config; later modes the run's recorded one, overrides on top."""
    if mode not in ("eval", "continuous_eval", "export"):
        return FLAGS.config
    if mode == "continuous_eval" and not recorded_config.wait_for(FLAGS.workdir, FLAGS.eval_timeout_secs):
        return FLAGS.config
    overrides = {**FLAGS["config"].override_values, **added}
    return recorded_config.for_mode(FLAGS.config, overrides, FLAGS.workdir)


def _run_mode(trainer_cls, overridden: list[str], added: dict):
    """Builds the trainer, runs `--mode`, prints the summary; returns what the mode produced.

    overridden: the paths of every `--config.x=` flag; added: those new to `optimizer.options`, with values.
    """
    trainer = trainer_cls(_mode_config(FLAGS.mode, added), workdir=FLAGS.workdir)
    if FLAGS.mode in ("train", "train_and_eval") and trainer.is_chief:
        hparams.write_session(FLAGS.workdir, trainer.config, overridden)
    which = int(FLAGS.checkpoint) if FLAGS.checkpoint.isdigit() else FLAGS.checkpoint
    start_time, start_step = time.perf_counter(), None
    if FLAGS.mode == "eval":
        produced = results = modes.evaluate_checkpoint(trainer, which)
    elif FLAGS.mode == "continuous_eval":
        produced = results = modes.continuous_eval(trainer, timeout_secs=FLAGS.eval_timeout_secs)
    elif FLAGS.mode == "export":
        path = modes.export(trainer, which)
        print(f"Exported to {path}")
        return path
    else:
        produced = trainer.fit(validate=FLAGS.mode == "train_and_eval", callbacks=_trial_callbacks())
        start_step = trainer.resumed_at_step
        results = produced[-1] if produced else {}
        if not produced and FLAGS.mode == "train_and_eval" and trainer.controller.evaluator.has_eval():
            results = {f"val/{k}": v for k, v in trainer.evaluate().items()}  # a finished run
    if trainer.is_chief:
        print(summary(trainer, results, time.perf_counter() - start_time, start_step))
    return produced


def run(trainer_cls, argv: Sequence[str] | None = None, *, get_config=None):
    """Parses flags, builds `trainer_cls(config, workdir)`, runs `--mode` and returns what it produced.

    A later `--config=` replaces an earlier one (`scripts/train.sh` passes a
    default). `--config.optimizer.options.x=v` flags may add constructor arguments
    (`framework.config.command_line`). The command line exits 0 after the
    mode; called from Python, `run` returns instead.

    Args:
      trainer_cls: the `framework.Trainer` subclass to run.
      argv: the command line (default `sys.argv`).
      get_config: `() -> ConfigDict`, the config when `--config` is absent (still overridable
        with `--config.x=`). Default: the `get_config` of the script being run, if it has one.

    Returns:
      `train` and `train_and_eval`: `Trainer.fit()`'s history, one log dict per epoch
      (or evaluation interval) trained ([] when the run had finished). `eval`: the
      evaluated checkpoint's results (`{"loss": ..., "accuracy": ...}`).
      `continuous_eval`: the last evaluated checkpoint's results. `export`: the
      SavedModel's path.

    Raises:
      SystemExit: code 2 with a one-line `FATAL` error naming the flag, config key or
        checkpoint at fault; code 0 after `--help` or a SIGTERM save.
    """
    argv = command_line.last_config_only(list(argv) if argv is not None else list(sys.argv))
    default = _script_config(argv, get_config)
    overridden = command_line.override_paths(argv)
    argv, added = command_line.split_open_overrides(argv, default or _file_config_for_open_keys(argv))
    _define_flags(argv, default)
    produced = []

    def main(_argv):
        try:
            produced.append(_run_mode(trainer_cls, overridden, added))
        except (config_lib.ConfigError, checkpoint.CheckpointNotFound) as e:
            _fatal(str(e))

    try:
        app.run(main, argv=argv, flags_parser=functools.partial(_parse_flags, default=default, added=added))
    except SystemExit as e:
        if e.code or not produced:
            raise
    return produced[0]
