"""What the step helpers a `train_step` calls do: evaluate the loss, apply gradients, feed metrics.

`StepHelpers` is a component of `framework.Trainer`, whose `compute_loss`,
`apply_gradients` and `update_metrics` (documented there) forward to it. It
runs in replica context, while a step is traced; it also remembers which
loss logs hold a single term, for the host's non-finite errors.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf
from absl import logging

from framework import heads, metrics
from framework.losses import Loss
from framework.optim import layer_losses, precision, updates
from framework.trainer.compiled_steps import CompiledSteps
from framework.trainer.counters import StepCounters
from framework.trainer.phase_metrics import PhaseMetrics


class StepHelpers:
    """Loss evaluation with layer losses, gradient application, metric updates.

    Args:
      model: the trainer's model.
      loss: the trainer's loss (None with a custom step).
      updater: the updater of the trainer's optimizers.
      counters: the trainer's counters (the step; non-finite steps are recorded).
      phase_metrics: the trainer's metrics.
      compiled: the trainer's compiled steps (their forward pass).
      uses_default_step: `Trainer.uses_default_step`.
    """

    def __init__(
        self,
        model: keras.Model,
        loss: Loss | None,
        *,
        updater: updates.Updater,
        counters: StepCounters,
        phase_metrics: PhaseMetrics,
        compiled: CompiledSteps,
        uses_default_step: Callable[[str], bool],
    ):
        self._model = model
        self._loss = loss
        self._updater = updater
        self._counters = counters
        self._metrics = phase_metrics
        self._compiled = compiled
        self._uses_default_step = uses_default_step
        self._single_term_logs: dict[str, str] = {}  # log key -> the term, for non-finite errors

    def compute_loss(
        self, y, y_pred, sample_weight, *, loss: Loss | None, prefix: str, model: keras.Model | None
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """The total to differentiate and its logs (see `Trainer.compute_loss`).

        Raises:
          ValueError: no loss (`build_loss()` returned None and none is given).
        """
        loss = loss if loss is not None else self._loss
        if loss is None:
            raise ValueError("compute_loss() needs a loss: build_loss() returned None.")
        labelled = {t.head for t in loss.flat_terms() if t.reads_labels}
        heads.check_batch(y, y_pred, labelled, sample_weight)
        loss, model = layer_losses.objective(loss, model, self._model, self._compiled.forward)
        result = loss(y, y_pred, sample_weight, model=model, step=self._counters.step)
        if len(result.terms) == 1:
            self._single_term_logs[f"{prefix}loss"] = next(iter(result.terms))
        return result.total, result.logs(prefix)

    def loss_term_of(self, key: str) -> str | None:
        """The term a loss log holds when its loss has one term (its logs then name no term); else None."""
        return self._single_term_logs.get(key)

    def apply_gradients(self, tape: tf.GradientTape, loss: tf.Tensor, variables, optimizer) -> None:
        """Differentiates `loss` and updates `variables` (see `Trainer.apply_gradients`).

        Raises:
          ValueError: the loss depends on none of `variables`.
        """
        entry = self._updater.entry(optimizer)
        optimizer = entry.optimizer
        variables = list(variables) if variables is not None else list(entry.variables())
        scale = precision.loss_scale(optimizer)
        output_gradients = None if scale is None else tf.cast(scale, loss.dtype)
        grads = tape.gradient(loss, variables, output_gradients=output_gradients)
        if all(g is None for g in grads):
            raise ValueError(
                f"apply_gradients(): the loss does not depend on any of the {len(variables)} variables given."
            )
        self._updater.apply(optimizer, grads, variables, loss, on_nonfinite=self._counters.record_nonfinite)

    def update_metrics(self, y, y_pred, sample_weight) -> None:
        """Updates the metrics of the phase being traced (see `Trainer.update_metrics`)."""
        nan_masked = frozenset(t.head for t in (self._loss.flat_terms() if self._loss else []) if t.mask_nan)
        metrics.update(self._metrics.of(), y, y_pred, sample_weight, nan_masked=nan_masked)

    def loss_fits_outputs(self, y_pred) -> bool:
        """Whether the default eval_step can apply the loss to the model's outputs.

        A custom train_step may feed the loss heads it builds itself (a
        distillation's teacher probabilities); evaluation then reports the
        metrics only, unless eval_step is overridden too.
        """
        wanted = heads.loss_heads(self._loss)
        if self._uses_default_step("train_step") or heads.outputs_have(y_pred, wanted):
            return True
        logging.warning(
            "eval_step: the loss reads heads %s, which the model's outputs do not have (train_step "
            "builds them); evaluation reports metrics only. Override eval_step to compute a loss.",
            sorted(wanted),
        )
        return False
