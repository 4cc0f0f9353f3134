"""Dtype policies and loss scaling.

`config.precision`:
  * float32: nothing changes.
  * mixed_bfloat16: layers compute in bfloat16 and keep float32 variables;
    no loss scaling (bfloat16 has float32's exponent range). The TPU choice.
  * mixed_float16: layers compute in float16; the optimizer is wrapped in
    `keras.optimizers.LossScaleOptimizer` (dynamic scaling).

Losses and metrics always compute in float32 (`framework.losses` casts its
inputs). A custom layer inherits the policy like any Keras layer: build its
weights with `self.add_weight` (they stay float32), compute with
`self.compute_dtype`, and give a final layer that feeds a softmax or a loss
`dtype="float32"` when it does numerically delicate work.
"""

from __future__ import annotations

import contextlib

import keras


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Sets the global Keras dtype policy while the model is built, then restores it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, precision: str):
    """Adds dynamic loss scaling for float16; other precisions need none."""
    if precision == "mixed_float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def loss_scale(optimizer) -> object | None:
    """The optimizer's current loss scale variable, or None without scaling."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.dynamic_scale
    return None
