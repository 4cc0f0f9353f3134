"""The compiled train, eval and predict functions a trainer hands the host loop.

`CompiledSteps` is a base of `framework.Trainer`: each function runs the
trainer's `train_step` / `eval_step` / `predict_step` under its strategy
(`framework.loop`), with the XLA plan of `config.jit_compile`; eval steps
trace and run inside `eval_phase`.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from framework.loop import step_function as loop
from framework.optim import keras_internals


class CompiledSteps:
    """`make_train_function`, `make_eval_function`, `make_predict_function` and `eval_phase`.

    Reads what `Trainer.__init__` sets: the strategy, config, model, primary
    optimizer, the step counters and the updater of its optimizers.
    """

    @contextlib.contextmanager
    def eval_phase(self):
        """Eval steps trace and run in here: they feed the eval metrics and see the EMA weights."""
        self._phase = "eval"  # the eval step is traced at its first call: it updates the eval metrics
        try:
            with keras_internals.ema_weights(self.optimizer):
                yield
        finally:
            self._phase = "train"

    def make_train_function(self) -> loop.StepFunction:
        """The compiled train function; it stops after a non-finite step unless nan_policy is "skip"."""
        skip = self.config.nan_policy == "skip"
        return loop.make_step_function(
            self.strategy,
            self._updater.counting_examples(self.train_step),
            where="train_step",
            on_step=lambda: self._step.assign_add(1),
            keep_going=None if skip else lambda: self._nonfinite_step < 0,
            jit_compile=self._xla_plan("train_step") == "step",
            finite_sums=skip,
            after=None if isinstance(self.strategy, tf.distribute.TPUStrategy) else self.after_train_call,
        )

    def make_eval_function(self) -> loop.StepFunction:
        """The compiled eval function (after `build_state` for the eval input)."""
        jit = self._xla_plan("eval_step") == "step"
        return loop.make_step_function(self.strategy, self.eval_step, where="eval_step", jit_compile=jit)

    def make_predict_function(self):
        """The compiled predict function: `fn(iterator) -> one batch of predict_step outputs`."""
        return loop.make_predict_function(self.strategy, self.predict_step)

    def _xla_plan(self, step: str) -> str | None:
        plan = loop.xla_plan(
            self.strategy, self.config.jit_compile, custom_step=not self.uses_default_step(step), where=step
        )
        if plan == "forward" and self._forward is self.model:
            self._forward = loop.compile_forward(self.model)
        return plan
