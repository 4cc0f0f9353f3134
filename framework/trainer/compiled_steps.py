"""The compiled train, eval and predict functions a trainer hands the host loop.

`CompiledSteps` is a component of `framework.Trainer`: each function runs the
trainer's `train_step` / `eval_step` / `predict_step` under its strategy
(`framework.loop`), with the XLA plan of `config.jit_compile`; eval steps
trace and run inside `eval_phase`. It owns the forward pass the steps call:
the model, or its XLA-compiled call when the plan compiles the forward only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import keras
import ml_collections
import tensorflow as tf

from framework.loop import step_function
from framework.optim import keras_internals, updates
from framework.trainer.counters import StepCounters
from framework.trainer.phase_metrics import PhaseMetrics

# The trainer's methods the default train and eval steps call: a user's override of one of them may
# branch on tensors in Python, so AutoGraph converts the step that calls it.
STEP_HOOKS = ("compute_loss", "apply_gradients", "update_metrics")


class StepFunctions(NamedTuple):
    """A trainer's per-replica steps (its bound methods, overridden or not)."""

    train_step: Callable
    eval_step: Callable
    predict_step: Callable


class CompiledSteps:
    """`make_train_function`, `make_eval_function`, `make_predict_function`, `eval_phase` and `forward`.

    Args:
      strategy: the strategy the steps run under.
      config: the run config (`nan_policy`, `jit_compile`).
      model: the trainer's model.
      optimizer: the primary optimizer (its EMA weights are swapped in for eval steps).
      steps: the trainer's steps.
      counters: the trainer's step and non-finite counters.
      updater: the updater of the trainer's optimizers (counts examples per step).
      phase_metrics: the trainer's metrics (eval steps feed the eval ones).
      uses_default_step: `Trainer.uses_default_step` (a custom step is compiled differently).
      after_train_call: what each train call reads after its last step (`Trainer.after_train_call`).

    Attributes:
      forward: the forward pass the steps call: the model, or its XLA-compiled call.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        config: ml_collections.ConfigDict,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        steps: StepFunctions,
        *,
        counters: StepCounters,
        updater: updates.Updater,
        phase_metrics: PhaseMetrics,
        uses_default_step: Callable[[str], bool],
        after_train_call: Callable[[], dict],
    ):
        self._strategy = strategy
        self._config = config
        self._model = model
        self._optimizer = optimizer
        self._steps = steps
        self._counters = counters
        self._updater = updater
        self._metrics = phase_metrics
        self._uses_default_step = uses_default_step
        self._after_train_call = after_train_call
        self.forward: Callable = model

    @contextlib.contextmanager
    def eval_phase(self):
        """Eval steps trace and run in here: they feed the eval metrics and see the EMA weights."""
        # The eval step is traced at its first call, in here: it updates the eval metrics.
        with self._metrics.evaluating(), keras_internals.ema_weights(self._optimizer):
            yield

    def make_train_function(self) -> step_function.StepFunction:
        """The compiled train function; it stops after a non-finite step unless nan_policy is "skip"."""
        skip = self._config.nan_policy == "skip"
        counters = self._counters
        return step_function.make_step_function(
            self._strategy,
            self._updater.counting_examples(self._steps.train_step),
            where="train_step",
            on_step=lambda: counters.step.assign_add(1),
            keep_going=None if skip else lambda: counters.nonfinite_step < 0,
            jit_compile=self._xla_plan("train_step") == "step",
            finite_sums=skip,
            after=None if isinstance(self._strategy, tf.distribute.TPUStrategy) else self._after_train_call,
            convert_step=self._converts("train_step"),
        )

    def make_eval_function(self) -> step_function.StepFunction:
        """The compiled eval function (after `build_state` for the eval input)."""
        jit = self._xla_plan("eval_step") == "step"
        return step_function.make_step_function(
            self._strategy,
            self._steps.eval_step,
            where="eval_step",
            jit_compile=jit,
            convert_step=self._converts("eval_step"),
        )

    def _converts(self, step: str) -> bool:
        """Whether AutoGraph converts `step`: when it, or a hook the default steps call, is the user's."""
        return not all(self._uses_default_step(name) for name in (step, *STEP_HOOKS))

    def make_predict_function(self):
        """The compiled predict function: `fn(iterator) -> one batch of predict_step outputs`."""
        return step_function.make_predict_function(self._strategy, self._steps.predict_step)

    def _xla_plan(self, step: str) -> str | None:
        plan = step_function.xla_plan(
            self._strategy,
            self._config.jit_compile,
            custom_step=not self._uses_default_step(step),
            where=step,
        )
        if plan == "forward" and self.forward is self._model:
            self.forward = step_function.compile_forward(self._model)
        return plan
