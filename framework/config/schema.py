"""Run configuration: the framework's defaults and their validation.

An experiment config starts from `defaults()` and changes what it needs::

    def get_config(arg=None):
        config = framework.config.defaults()
        config.batch_size = 128
        config.model.width = 256        # free-form sections: model, data, task
        return config

A variant string (`--config=configs/x.py:smoke,width=64`) reaches
`get_config(arg)`; `parse_arg(arg, "configs/x.py", smoke=False, width=128)`
reads it against the keys the file knows.

`defaults()` is locked: assigning a key it does not know (`config.batchsize`)
fails at once with a "did you mean" hint. `resolve()` is applied to every
config a `Trainer` receives; it fills missing keys from the defaults, rejects
unknown keys with the list of valid keys next to them, and checks values.

A config file may also define `get_sweep(arg)` for `scripts/sweep.py`: a list
of override dicts (a grid, built with `product` and `zipped`), or one dict
whose values may be ranges (`uniform`, `log_uniform`, `integers`, `choice`)
for `--search=optuna` (they live in `framework.config.sweep_space`; this module
re-exports them for config files)::

    def get_sweep(arg=None):
        return product({"optimizer.learning_rate": [1e-3, 3e-3], "seed": range(3)})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from framework.config import keys, record_file
from framework.config.errors import ConfigError as ConfigError
from framework.config.errors import did_you_mean as did_you_mean
from framework.config.sweep_space import Range as Range
from framework.config.sweep_space import choice as choice
from framework.config.sweep_space import integers as integers
from framework.config.sweep_space import log_uniform as log_uniform
from framework.config.sweep_space import product as product
from framework.config.sweep_space import uniform as uniform
from framework.config.sweep_space import zipped as zipped

# Sections whose keys are free: experiments put their own there.
FREE_SECTIONS = ("model", "data", "task", "optimizer.options")

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
MODES = ("train", "eval", "train_and_eval", "continuous_eval", "export")
NAN_POLICIES = ("raise", "skip", "restore")


def defaults() -> ml_collections.ConfigDict:
    """Every key the framework reads, with its default value."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 64  # global: summed over all replicas
    c.epochs = 10
    c.train_steps = 0  # >0: a step-based run of this many optimizer updates (README "Long runs")
    c.eval_every_steps = 0  # step-based runs: evaluate every N updates; 0: at the end only
    c.steps_per_epoch = 0  # 0: one pass over the training dataset
    c.steps_per_execution = 0  # train steps per compiled call; 0: auto
    c.log_every_steps = 100
    c.eval_every_epochs = 1
    c.jit_compile = False  # XLA; see framework.loop.step_function.xla_plan for what is compiled where
    c.deterministic = False  # op determinism + seeds: two runs give bitwise-equal weights
    c.precision = "float32"
    c.grad_accum_steps = 1  # micro-batches per optimizer update; see framework.optim.updates
    c.nan_policy = "raise"  # non-finite step: raise | skip (drop the update) | restore (last checkpoint)
    c.nan_max_retries = 3  # restore: give up after this many restores
    c.profile_steps = ()  # (first, last): a tf.profiler trace of those steps in the workdir

    c.debug = ml_collections.ConfigDict()
    c.debug.fast_dev_run = 0  # N > 0: one epoch of N train steps and N eval steps, no checkpoints
    c.debug.limit_train_steps = 0  # cap on the run's train steps (0: no cap)
    c.debug.limit_eval_steps = 0  # cap steps per evaluation
    c.debug.overfit_batches = 0  # N > 0: train on the same N batches every epoch

    c.distribution = ml_collections.ConfigDict()
    c.distribution.strategy = "auto"
    c.distribution.cpu_devices = 0  # >0: split the host CPU into N logical devices
    c.distribution.tpu = "local"  # TPUClusterResolver address; "local" on a TPU VM
    c.distribution.peer_timeout_secs = 30  # multi_worker: a worker silent this long is lost; the rest exit

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # any Keras 3 optimizer (framework.optim.optimizer_builder)
    c.optimizer.learning_rate = 1e-3  # the peak rate of a schedule
    c.optimizer.schedule = "constant"  # constant | cosine | warmup_cosine | piecewise
    c.optimizer.warmup_steps = 0
    c.optimizer.decay_steps = 0  # 0: the run's number of updates
    c.optimizer.alpha = 0.0  # cosine: final rate as a fraction of the peak
    c.optimizer.boundaries = ()  # piecewise: update counts where the rate changes ...
    c.optimizer.rates = ()  # ... and the len(boundaries) + 1 rates
    c.optimizer.weight_decay = config_dict.placeholder(float)  # None: the optimizer's default; 0: none
    c.optimizer.ema = 0.0  # moving average of the trained weights for eval/export (not BN stats); 0: off
    c.optimizer.options = ml_collections.ConfigDict()  # other constructor arguments, e.g. momentum
    # Clipping of the all-reduced, unscaled gradient (framework.optim.updates); 0: off.
    c.optimizer.clipnorm = 0.0  # per variable
    c.optimizer.global_clipnorm = 0.0  # over all variables

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0  # 0: no mid-epoch checkpoints
    c.checkpoint.every_epochs = 1  # 0: only the final state (and on SIGTERM)
    # Epoch and step saves wait until this long after the previous save (short epochs would spend
    # their time saving); the final state, SIGTERM and runs ranking a best_metric always save. 0: off.
    c.checkpoint.min_interval_secs = 60.0
    c.checkpoint.max_to_keep = 3  # the newest N are kept ...
    c.checkpoint.best_metric = ""  # ... plus the best `keep_best` by this logged key, e.g. "val/accuracy"
    c.checkpoint.best_mode = "max"
    c.checkpoint.keep_best = 1
    c.checkpoint.async_save = True
    c.checkpoint.allow_mismatch = (
        False  # workdir holds another run's checkpoints: set them aside, start fresh
    )

    for section in FREE_SECTIONS[:3]:
        c[section] = ml_collections.ConfigDict()
    c.lock()
    for section in FREE_SECTIONS:
        keys.lookup(c, section).unlock()
    return c


def parse_arg(arg: str | None, name: str = "config", /, **spec: Any) -> ml_collections.ConfigDict:
    """A config file's variant string, parsed against its known keys (big_vision's `parse_arg`).

        def get_config(arg=None):
            arg = parse_arg(arg, "configs/x.py", smoke=False, width=128, loss=("bce", "focal"))
            # "" -> smoke=False, width=128, loss="bce";  "smoke,width=64" -> smoke=True, width=64
            # "focal" or "loss=focal" -> loss="focal"

    Args:
      arg: comma-separated items; `key=value` sets a key (the value converted
        to the type of its default), a bare `key` sets a boolean key True, and
        a bare word that is one of a choice key's values selects it.
      name: the config file, for error messages. `arg` and `name` are
        positional, so any key may be in `spec`.
      **spec: every key with its default: a bool, int, float or str, or a
        tuple of str choices whose first element is the default.

    Returns:
      A ConfigDict with every key of `spec`.

    Raises:
      ValueError: an item names no key (the message lists the valid ones), or
        its value does not convert to the key's type or is not one of its
        choices.
    """
    values = {key: default[0] if isinstance(default, tuple) else default for key, default in spec.items()}
    choices = {key: default for key, default in spec.items() if isinstance(default, tuple)}
    valid = [_describe_key(key, default) for key, default in spec.items()]
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, has_value, text = item.partition("=")
        owner = next((k for k, options in choices.items() if item in options), None)
        if owner is not None and not has_value:
            values[owner] = item
        elif key in spec and has_value:
            values[key] = _parse_value(name, key, text, spec[key])
        elif key in spec and isinstance(spec[key], bool):
            values[key] = True
        else:
            raise ValueError(f"{name}: unknown variant {item!r}; valid: {', '.join(valid)}.")
    return ml_collections.ConfigDict(values)


def _describe_key(key: str, default: Any) -> str:
    if isinstance(default, bool):
        return key
    if isinstance(default, tuple):
        return f"{key}={'|'.join(default)} (or {key}'s value alone)"
    return f"{key}=<{type(default).__name__}>"


def _parse_value(name: str, key: str, text: str, default: Any) -> Any:
    if isinstance(default, tuple):
        if text not in default:
            raise ValueError(f"{name}: {key}={text!r} is not one of {', '.join(default)}.")
        return text
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name}: {key}={text!r} is not a boolean (true/false).")
        return text.lower() in ("true", "1")
    if isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            raise ValueError(f"{name}: {key}={text!r} is not {type(default).__name__}.") from None
    return text


def _items(config: Any) -> list[tuple[str, Any]]:
    if isinstance(config, ml_collections.ConfigDict):
        return list(config.items(preserve_field_references=True))
    return list(config.items())


def _merge(target: ml_collections.ConfigDict, source: Any, path: str) -> None:
    valid = list(target.keys())
    for key, value in _items(source):
        full = f"{path}.{key}" if path else key
        if full in FREE_SECTIONS:
            with target.unlocked():
                target[key] = ml_collections.ConfigDict(_plain(value))
            target[key].unlock()
            continue
        if key not in valid:
            raise ConfigError(f"Unknown config key {full!r}.{did_you_mean(key, valid)}")
        default = target[key]
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
                raise ConfigError(f"config.{full} must be a section of keys, got {value!r}.")
            _merge(default, value, full)
            continue
        if isinstance(value, config_dict.FieldReference):
            value = value.get()
        try:
            target[key] = value
        except TypeError as e:
            raise ConfigError(f"config.{full}={value!r} has the wrong type: {e}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    return dict(value)


def resolve(config: Any | None = None) -> ml_collections.ConfigDict:
    """Returns a full, checked copy: `defaults()` overlaid with `config`."""
    resolved = defaults()
    if config is not None:
        if not isinstance(config, (Mapping, ml_collections.ConfigDict)):
            raise ConfigError(
                f"config must be an ml_collections.ConfigDict or a dict, got {type(config).__name__}."
            )
        _merge(resolved, config, "")
    check_values(resolved)
    return resolved


def load(workdir: str) -> ml_collections.ConfigDict:
    """The config a finished (or running) run recorded in `workdir/config.json`.

    Args:
      workdir: the run's workdir.

    Returns:
      The run's config, resolved like any config a Trainer receives. When
      `build_optimizer` was overridden, config.json holds that optimizer's
      Keras config, and the `optimizer` section here has the defaults.

    Raises:
      FileNotFoundError: `workdir` has no config.json (the path is named).
      ConfigError: the record does not resolve against this version's defaults.
    """
    recorded = record_file.load(workdir)
    path = os.path.join(workdir, record_file.FILENAME)
    if recorded is None:
        raise FileNotFoundError(
            f"{path} does not exist: {workdir} holds no run's record (fit() writes it when it starts "
            "training in a workdir)."
        )
    try:
        return resolve(record_file.retyped(recorded, defaults().to_dict()))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _choice(config: ml_collections.ConfigDict, key: str, choices: tuple[str, ...]) -> None:
    value = keys.lookup(config, key)
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r} is not one of {', '.join(choices)}.")


def _positive(config: ml_collections.ConfigDict, key: str, *, allow_zero: bool = False) -> None:
    value = keys.lookup(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ConfigError(f"config.{key}={value!r} must be an integer {bound}.")


def check_values(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first key whose value cannot work."""
    _positive(config, "batch_size")
    _positive(config, "epochs", allow_zero=True)
    _positive(config, "steps_per_epoch", allow_zero=True)
    _positive(config, "steps_per_execution", allow_zero=True)
    _positive(config, "log_every_steps")
    _positive(config, "eval_every_epochs")
    _positive(config, "train_steps", allow_zero=True)
    _positive(config, "eval_every_steps", allow_zero=True)
    _check_step_mode(config)
    _positive(config, "distribution.cpu_devices", allow_zero=True)
    _positive(config, "distribution.peer_timeout_secs")
    _positive(config, "checkpoint.every_steps", allow_zero=True)
    _positive(config, "checkpoint.every_epochs", allow_zero=True)
    _positive(config, "checkpoint.max_to_keep")
    interval = config.checkpoint.min_interval_secs
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval >= 0:
        raise ConfigError(
            f"config.checkpoint.min_interval_secs={interval!r} must be a number of seconds >= 0 "
            "(0: save at every due epoch or step)."
        )
    _positive(config, "checkpoint.keep_best")
    _choice(config, "checkpoint.best_mode", ("max", "min"))
    _positive(config, "grad_accum_steps")
    _choice(config, "precision", PRECISIONS)
    _choice(config, "nan_policy", NAN_POLICIES)
    _positive(config, "nan_max_retries")
    for key in ("fast_dev_run", "limit_train_steps", "limit_eval_steps", "overfit_batches"):
        _positive(config, f"debug.{key}", allow_zero=True)
    profile = tuple(config.profile_steps)
    if profile and (len(profile) != 2 or not 1 <= profile[0] <= profile[1]):
        raise ConfigError(
            f"config.profile_steps={profile!r} must be () or (first, last) with 1 <= first <= last."
        )
    _choice(config, "optimizer.schedule", ("constant", "cosine", "warmup_cosine", "piecewise"))
    _positive(config, "optimizer.warmup_steps", allow_zero=True)
    _positive(config, "optimizer.decay_steps", allow_zero=True)
    if not 0.0 <= config.optimizer.ema < 1.0:
        raise ConfigError(f"config.optimizer.ema={config.optimizer.ema!r} must be in [0, 1).")
    _choice(config, "distribution.strategy", STRATEGIES)
    if not config.optimizer.learning_rate > 0:
        raise ConfigError(f"config.optimizer.learning_rate={config.optimizer.learning_rate!r} must be > 0.")
    for key in ("clipnorm", "global_clipnorm"):
        if not config.optimizer[key] >= 0:
            raise ConfigError(f"config.optimizer.{key}={config.optimizer[key]!r} must be >= 0 (0: off).")
    if config.optimizer.clipnorm and config.optimizer.global_clipnorm:
        raise ConfigError(
            "config.optimizer.clipnorm and config.optimizer.global_clipnorm are both set; use one of them."
        )


# Keys that count epochs; a step-based run (train_steps > 0) leaves them at their defaults. `epochs` is
# the exception: train_steps wins over it (a config counted in epochs runs by steps with train_steps alone).
EPOCH_KEYS = ("steps_per_epoch", "eval_every_epochs", "checkpoint.every_epochs")


def unused_epochs(config: ml_collections.ConfigDict) -> bool:
    """Whether a step-based run's config sets `epochs` (away from its default and 0), which it ignores."""
    return bool(config.train_steps) and config.epochs not in (0, defaults().epochs)


def _check_step_mode(config: ml_collections.ConfigDict) -> None:
    """A run is counted in epochs or in steps: mixing the two keys' kinds is an error."""
    if not config.train_steps:
        if config.eval_every_steps:
            raise ConfigError(
                f"config.eval_every_steps={config.eval_every_steps} needs a step-based run: set "
                "config.train_steps (optimizer updates), or use config.eval_every_epochs."
            )
        return
    default = defaults()
    for key in EPOCH_KEYS:
        value, unset = keys.lookup(config, key), keys.lookup(default, key)
        if value != unset:
            raise ConfigError(
                f"config.{key}={value!r} and config.train_steps={config.train_steps} are both set: a "
                f"run is counted in epochs or in steps. Set config.{key}={unset!r} for a step-based "
                "run, or config.train_steps=0 for an epoch-based one."
            )
