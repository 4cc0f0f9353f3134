"""Where the optimizer is built: `config.optimizer` -> a Keras optimizer and its schedule.

    config.optimizer.name = "adamw"          # any Keras 3 optimizer: sgd, adam, adamw, lion, rmsprop, ...
    config.optimizer.learning_rate = 1e-3    # the peak rate
    config.optimizer.schedule = "warmup_cosine"   # constant | cosine | warmup_cosine | piecewise
    config.optimizer.warmup_steps = 500
    config.optimizer.decay_steps = 0          # 0: until the end of training
    config.optimizer.weight_decay = 0.01      # decoupled, Keras' weight_decay; unset: Keras' default
    config.optimizer.ema = 0.999              # Keras' use_ema momentum; 0: off
    config.optimizer.options.momentum = 0.9   # any other constructor argument

Schedules are Keras `LearningRateSchedule`s, evaluated at
`optimizer.iterations` (applied updates). With `decay_steps = 0` the length
is filled in once the run's number of updates is known (`fit_schedule`).
Evaluation and export use the EMA weights when `ema` is set; training
continues from the raw ones.
"""

from __future__ import annotations

import ml_collections
import numpy as np
import tensorflow as tf
from keras import optimizers as keras_optimizers
from keras.optimizers import schedules as keras_schedules

from framework.config import ConfigError

SCHEDULES = ("constant", "cosine", "warmup_cosine", "piecewise")


def learning_rate(cfg: ml_collections.ConfigDict):
    """A float or a LearningRateSchedule, per `config.optimizer`."""
    peak = cfg.learning_rate
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "piecewise":
        boundaries, rates = list(cfg.boundaries), [float(v) for v in cfg.rates]
        if len(rates) != len(boundaries) + 1:
            raise ConfigError(
                f"config.optimizer.schedule='piecewise' needs len(rates) == len(boundaries) + 1; got "
                f"boundaries={boundaries} and rates={rates}."
            )
        return keras_schedules.PiecewiseConstantDecay([int(b) for b in boundaries], rates)
    warmup = cfg.warmup_steps if cfg.schedule == "warmup_cosine" else 0
    schedule = keras_schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak,
        decay_steps=max(cfg.decay_steps, 1),
        alpha=cfg.alpha,
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )
    schedule.fit_to_run = cfg.decay_steps == 0
    return schedule


def build(cfg: ml_collections.ConfigDict) -> keras_optimizers.Optimizer:
    """The Keras optimizer `config.optimizer` describes (`Trainer.build_optimizer`'s default).

    Args:
      cfg: the `config.optimizer` section.

    Returns:
      A new, unbuilt Keras optimizer.

    Raises:
      ConfigError: the schedule's settings disagree, or Keras cannot build
        `cfg.name` with the given options (the message lists them).
    """
    kwargs = dict(cfg.options.to_dict())
    kwargs["learning_rate"] = learning_rate(cfg)
    if cfg.weight_decay is not None:  # unset: the optimizer's own default (AdamW decays by default)
        kwargs["weight_decay"] = cfg.weight_decay
    if cfg.ema:
        kwargs.update(use_ema=True, ema_momentum=cfg.ema)
    try:
        return keras_optimizers.deserialize({"class_name": cfg.name, "config": kwargs})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.optimizer: cannot build {cfg.name!r} with {sorted(kwargs)}: {e}") from None


def fit_schedule(optimizer: keras_optimizers.Optimizer, total_updates: int) -> None:
    """Sets the length of a `decay_steps = 0` cosine schedule to the run's updates (before tracing)."""
    schedule = getattr(optimizer, "_learning_rate", None)
    schedule = getattr(getattr(optimizer, "inner_optimizer", None), "_learning_rate", schedule)
    if getattr(schedule, "fit_to_run", False):
        schedule.decay_steps = max(1, total_updates - schedule.warmup_steps)


def current_learning_rate(optimizer: keras_optimizers.Optimizer) -> float:
    return float(np.asarray(tf.convert_to_tensor(optimizer.learning_rate)))
