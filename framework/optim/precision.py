"""Dtype policies and loss scaling.

`config.precision`:
  * float32: nothing changes.
  * mixed_bfloat16: layers compute in bfloat16 and keep float32 variables;
    no loss scaling (bfloat16 has float32's exponent range). The TPU choice.
  * mixed_float16: layers compute in float16 and keep float32 variables; the
    optimizer is wrapped in `keras.optimizers.LossScaleOptimizer` (dynamic
    scaling: start at 2**15, halve on overflow, double after 2000 good
    steps). `Trainer.apply_gradients` multiplies the loss by the scale before
    differentiating; `framework.optim.updates` unscales and agrees on overflow
    across replicas. The scale is logged as `loss_scale` (read on the host at
    log points; `loss_scale/<name>` for optimizers from `add_optimizer`).

The policy is set while `build_model` runs, so it applies to every layer
created there, and to nothing created elsewhere. Losses (`framework.losses`
casts its inputs) and Keras metrics compute in float32 whatever the policy.

Keras' rules for a layer (built-in or custom): its variables are created in
`policy.variable_dtype` (float32) by `self.add_weight`; floating inputs to
`call` are cast to `policy.compute_dtype`, and Keras casts the variables it
reads there. A layer created with `dtype="float32"` computes in float32 under
any policy. So, in a custom layer:

  * create weights with `self.add_weight` (never `tf.Variable`), and new
    tensors with `dtype=self.compute_dtype`, not a hard-coded "float32";
  * do numerically delicate work (softmax, log, exp, variances, sums over
    many elements) in float32: `ops.cast(x, "float32")`, then cast back;
  * give the model's last layer `dtype="float32"` when it feeds a softmax or
    produces values beyond float16's range (65504) or precision, e.g.
    `keras.layers.Dense(10, dtype="float32")` (experiments/digits.py does);
  * a layer that only accepts float32 (a custom op) should set
    `dtype="float32"` itself, or be called outside `build_model`.
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
