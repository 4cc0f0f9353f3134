"""Trainer: build hooks and the per-replica step.

Its bases hold the rest: `framework.trainer.phases` (`fit`, `evaluate`, `predict`,
`restore`, run by the Controller), `framework.trainer.variables` (building the
variables, the input checks, the checkpoint groups), `framework.trainer.host_reads`
(what the host loop reads and sets between compiled calls) and
`framework.trainer.compiled_steps` (the compiled train / eval / predict functions).

    class Trainer:
        __init__:  strategy <- config.distribution; under strategy.scope():
                   model, optimizer, loss, metrics <- build_* hooks
        fit():
            for epoch in epochs:
                reset metrics; iterator = train input's iterator for epoch
                while the epoch has steps left:
                    n = steps to the next log point (<= steps_per_execution)
                    train_fn(iterator, n)          # n x strategy.run(train_step)
                    at log points: loss means, metric results (read by the call) -> logs
                if an eval dataset exists: logs |= val/... <- evaluate()
        train_step(batch):                         # per replica, compiled
            x, y, w = batch
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss, logs = compute_loss(y, y_pred, w)
            apply_gradients(tape, loss)
            update_metrics(y, y_pred, w)
            return logs

Override `train_step` / `eval_step` to own the step; keep `compute_loss`
and `apply_gradients` for what is subtle (distribution, loss scaling,
non-finite losses).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import ml_collections
import tensorflow as tf
from absl import logging

from framework import config as config_lib
from framework import distribute, heads, metrics
from framework.losses import Loss
from framework.optim import layer_losses, optimizer_builder, precision, updates
from framework.trainer import run_checks
from framework.trainer.compiled_steps import CompiledSteps
from framework.trainer.host_reads import HostReads
from framework.trainer.phases import Phases
from framework.trainer.variables import TrainerState


class _Default:
    """Marks an argument left out (where None means something else)."""


class StepLoss(NamedTuple):
    """`compute_loss` result: the loss to differentiate and its log values."""

    loss: tf.Tensor
    logs: dict[str, tf.Tensor]


def _expect(value: Any, types: type | tuple[type, ...], hook: str, what: str) -> Any:
    if not isinstance(value, types):
        raise TypeError(f"{hook}() must return {what}, got {type(value).__name__}: {value!r:.200}")
    return value


def _counter(name: str, initial: int) -> tf.Variable:
    return tf.Variable(
        initial,
        dtype=tf.int64,
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class Trainer(Phases, TrainerState, HostReads, CompiledSteps):
    """Subclass and implement `build_model`, `build_train_dataset`, `build_loss`.

    A subclass's `__init__` may load data before calling `super().__init__`,
    but should not run TensorFlow ops there: the strategy (and
    `config.distribution.cpu_devices`) is set up in `Trainer.__init__`, and
    logical devices cannot be created once TensorFlow has started.

    Checkpoints hold every variable of the run (`framework.checkpointing.variable_groups`), except
    models held as attributes that are frozen (no trainable weights) or that
    were given to the constructor (set before `super().__init__`: a teacher),
    unless an optimizer trains them. `checkpoint_include` / `checkpoint_exclude`
    name attributes to save or leave out regardless.

    Args:
      config: a config (`framework.config.defaults()` with changes), a dict
        of overrides, or None (the defaults); resolved and checked here.
      workdir: where checkpoints, metrics.jsonl, TensorBoard logs and
        config.json go; None: nowhere (no checkpoints, no resume).
      strategy: a `tf.distribute.Strategy` to use instead of the one
        `config.distribution` describes.

    Raises:
      ConfigError: a config key is unknown, a value is invalid, or the batch
        size does not divide among the replicas (the key is named).
      OSError: `workdir` is a file or not writable.
      TypeError: a build hook returned the wrong kind of object (the hook is named).
    """

    checkpoint_include: tuple[str, ...] = ()
    checkpoint_exclude: tuple[str, ...] = ()

    # Attributes the framework sets: not walked for variables to checkpoint (`framework.checkpointing.variable_groups`).
    _FRAMEWORK_ATTRIBUTES = frozenset(
        {
            "eval_metrics",
            "model",
            "optimizer",
            "metrics",
            "strategy",
            "config",
            "loss",
            "_step",
            "_nonfinite_step",
            "_nonfinite_count",
            "_single_term_logs",
            "_updater",
            "_given_attributes",
            "_controller",
            "_forward",  # the model, or its compiled forward pass
            "checkpoint_include",
            "checkpoint_exclude",
        }
    )

    def __init__(
        self,
        config: ml_collections.ConfigDict | dict | None = None,
        workdir: str | None = None,
        *,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self._given_attributes = frozenset(vars(self))  # set by a subclass before the build hooks
        self.config = config_lib.resolve(config)
        run_checks.workdir(workdir)
        self.workdir = workdir
        self.strategy = strategy or distribute.make_strategy(self.config.distribution)
        distribute.log_strategy(self.strategy)
        run_checks.batch_size(self.config, self.strategy)
        self.is_chief = distribute.is_chief(self.strategy)
        keras.utils.set_random_seed(self.config.seed)
        if self.config.deterministic:
            tf.config.experimental.enable_op_determinism()
            # Its rewrites made a step inside the compiled loop round differently from
            # a call's first step: the weights depended on steps_per_execution.
            tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
        self.epoch = 0
        self.resumed_at_step = 0
        self._single_term_logs: dict[str, str] = {}  # log key -> the term, for non-finite errors
        self._updater = updates.Updater.from_config(self.strategy, self.config)
        with self.strategy.scope():
            with precision.dtype_policy(self.config.precision):
                self.model = _expect(self.build_model(), keras.Model, "build_model", "a keras.Model")
            self._forward = self.model
            optimizer = _expect(
                self.build_optimizer(),
                keras.optimizers.Optimizer,
                "build_optimizer",
                "a keras.optimizers.Optimizer",
            )
            self.optimizer = self._updater.add(optimizer, self.model, primary=True)
            self.loss = self.build_loss()
            if self.loss is not None:
                _expect(self.loss, Loss, "build_loss", "a framework.losses.Loss")
                if self.uses_default_step("train_step"):  # a custom step may build its own heads
                    heads.check_loss_heads(self.model, self.loss)
            self.metrics = metrics.collect(self.model, self.build_metrics())
            eval_metrics = self.build_eval_metrics()
            self.eval_metrics = (
                self.metrics if eval_metrics is None else metrics.collect(self.model, eval_metrics)
            )
            self._phase = "train"  # which metrics update_metrics() feeds while a step is traced
            self._step = _counter("step", 0)
            self._nonfinite_step = _counter("nonfinite_step", -1)
            self._nonfinite_count = _counter("nonfinite_count", 0)

    # ---- hooks -------------------------------------------------------------

    def build_model(self) -> keras.Model:
        """The model to train, built under the strategy's scope and the precision's dtype policy.

        Returns:
          A `keras.Model`; dict outputs make one head per key (`framework.heads`).
        """
        raise NotImplementedError("Implement build_model() -> keras.Model.")

    def build_train_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        """The training data of one input pipeline: per-replica batches.

        Args:
          input_context: which pipeline this is and how many replicas share it;
            `input_context.get_per_replica_batch_size(config.batch_size)` is the
            batch size, `framework.distribute.global_batches` batches in-memory data.

        Returns:
          A `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, sample_weight)`, finite
          (one pass is an epoch; with `config.steps_per_epoch` set, epochs read on
          through it, docs/input.md) or infinite with `config.steps_per_epoch` set;
          a step-based run (`config.train_steps`) takes either, cycling a finite one.
        """
        raise NotImplementedError(
            "Implement build_train_dataset(input_context) -> tf.data.Dataset of per-replica batches."
        )

    def build_eval_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset | None:
        """The validation data, batched like `build_train_dataset`'s; None (the default): no evaluation.

        Args:
          input_context: as for `build_train_dataset`.

        Returns:
          A finite `tf.data.Dataset`, or None.
        """
        return None

    def build_loss(self) -> Loss | None:
        """The loss the default `train_step` minimizes: terms combined with `+` and `*`.

        Returns:
          A `framework.losses.Loss`; None only with a custom `train_step`.

        Raises:
          NotImplementedError: not overridden while `train_step` is the default.
        """
        if type(self).train_step is Trainer.train_step:
            raise NotImplementedError("Implement build_loss() -> framework.losses.Loss.")
        return None

    def build_metrics(self) -> list | dict:
        """The metrics `update_metrics` feeds in train steps (and eval steps, unless `build_eval_metrics` says otherwise).

        Returns:
          Keras metrics: a list, or a dict head -> list for a multi-output model.
        """
        return []

    def build_eval_metrics(self) -> list | dict | None:
        """The metrics eval steps feed, when they differ from the training ones.

        Returns:
          Keras metrics as for `build_metrics`, or None (the default): the same as `build_metrics()`.
        """
        return None

    def build_callbacks(self) -> list:
        """The callbacks of every `fit()`, before those `fit(callbacks=...)` adds.

        Returns:
          Keras callbacks and `framework.Periodic` hooks.
        """
        return []

    def build_optimizer(self) -> keras.optimizers.Optimizer:
        """The primary optimizer, built under the strategy's scope.

        Returns:
          A `keras.optimizers.Optimizer`; by default the one `config.optimizer`
          describes (name, schedule, weight decay, EMA; `framework.optim.optimizer_builder`).
        """
        return optimizer_builder.build(self.config.optimizer)

    def add_optimizer(self, optimizer: keras.optimizers.Optimizer, variables, *, name: str | None = None):
        """Registers a second optimizer (a GAN's) for `apply_gradients(optimizer=...)`.

        Call it in a build hook (under the strategy scope): `self.d_opt = self.add_optimizer(
        keras.optimizers.Adam(), self.disc)`.

        Args:
          optimizer: a Keras optimizer.
          variables: what it trains: a Keras layer or model, a list of layers and variables,
            or a callable returning them (resolved before tracing).
          name: its name in logs (`lr/<name>`) and checkpoints; default: its own.

        Returns:
          The optimizer to use (loss-scaled under mixed_float16).
        """
        return self._updater.add(optimizer, variables, name=name)

    # ---- the step ----------------------------------------------------------

    def train_step(self, batch) -> dict:
        """One training step on one replica's batch (traced once, run compiled).

        Override to own the step; keep `compute_loss` and `apply_gradients`
        for what is subtle (global reductions, loss scaling, non-finite steps).

        Args:
          batch: `x`, `(x, y)` or `(x, y, sample_weight)`, as the dataset yields it.

        Returns:
          Log values: tensors or `framework.Weighted`, meaned over steps.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        with tf.GradientTape() as tape:
            y_pred = self._forward(x, training=True)  # XLA-compiled under config.jit_compile
            loss, step_logs = self.compute_loss(y, y_pred, sample_weight)
        self.apply_gradients(tape, loss)
        self.update_metrics(y, y_pred, sample_weight)
        return step_logs

    def eval_step(self, batch) -> dict:
        """One evaluation step on one replica's batch: the loss (when it applies) and the eval metrics.

        Args:
          batch: as for `train_step`.

        Returns:
          Log values, as for `train_step`.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        y_pred = self._forward(x, training=False)
        step_logs = {}
        if self.loss is not None and self._loss_fits_outputs(y_pred):
            step_logs = self.compute_loss(y, y_pred, sample_weight).logs
        self.update_metrics(y, y_pred, sample_weight)
        return step_logs

    def predict_step(self, batch):
        """The model's outputs for one replica's batch (traced once, run compiled by `predict`).

        Args:
          batch: `x`, or `(x, y[, sample_weight])` whose labels are ignored.

        Returns:
          The outputs, nested like the model's.
        """
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        return self._forward(x, training=False)

    # The step helpers need no autograph (converting them cost seconds per trace);
    # a custom train_step calling them is still converted.
    @tf.autograph.experimental.do_not_convert
    def compute_loss(
        self,
        y,
        y_pred,
        sample_weight=None,
        *,
        loss: Loss | None = None,
        prefix: str = "",
        model: keras.Model | None | type[_Default] = _Default,
    ) -> StepLoss:
        """Evaluates `loss` (default: `self.loss`) plus `model`'s layer losses, with global reductions.

        As Keras' `Model.compute_loss`, the objective includes the layer
        losses of `model` (`model.losses`: kernel and activity regularizers,
        `add_loss` values of its last call), once, as the term
        `model_losses`; unless `loss` holds a `losses.ModelLosses` term
        itself, which then counts them instead (`ModelLosses(weight=0.0)`
        leaves them out). Call it after `model`'s forward pass.

        Args:
          y: the batch labels (a dict keyed by head for a multi-output model);
            None for a loss whose terms read no labels (`PredictionTerm`,
            regularizers).
          y_pred: the model's outputs.
          sample_weight: per-example weights, or None.
          loss: a `framework.losses.Loss` to evaluate instead of `self.loss`.
          prefix: prepended to every log key (a GAN's "d_" and "g_" losses).
          model: the model this objective trains: its layer losses are added
            and its regularizer terms (`L2`, ...) read it. Default
            `self.model`; pass the model another objective trains (a GAN's
            `model=self.disc`), or None to add no layer losses. Models held
            as attributes are never added to `self.model`'s objective.

        Returns:
          A `StepLoss`: the total to differentiate (its value is the global
          loss; its gradient is this replica's share, so the optimizer's sum
          over replicas gives the global gradient) and its logs: `loss`;
          `loss/<term>` when there are several terms; `loss/<term>/raw`
          (unweighted) when a term's weight is not 1. Log values are
          `framework.Weighted` (`.value`): means over steps weigh each step
          by the term's global weight sum or example count.

        Raises:
          ValueError: no loss (`build_loss()` returned None and none is given).
          KeyError, ValueError: labels, outputs or weights do not fit the loss's heads (named).
        """
        loss = loss if loss is not None else self.loss
        if loss is None:
            raise ValueError("compute_loss() needs a loss: build_loss() returned None.")
        model = self.model if model is _Default else model
        labelled = {t.head for t in loss.flat_terms() if t.reads_labels}
        heads.check_batch(y, y_pred, labelled, sample_weight)
        loss, model = layer_losses.objective(loss, model, self.model, self._forward)
        result = loss(y, y_pred, sample_weight, model=model, step=self._step)
        if len(result.terms) == 1:
            self._single_term_logs[f"{prefix}loss"] = next(iter(result.terms))
        return StepLoss(result.total, result.logs(prefix))

    @tf.autograph.experimental.do_not_convert
    def apply_gradients(self, tape: tf.GradientTape, loss: tf.Tensor, variables=None, optimizer=None) -> None:
        """Differentiates `loss`, then updates `variables` unless something is non-finite.

        With float16 the loss is scaled here; `framework.optim.updates` does the rest
        on every replica alike (all-reduce, unscale, clip, accumulate, skip
        overflowing steps). A non-finite loss (or, unscaled, gradient) skips
        the update and stops training with an error naming the step.

        Args:
          tape: the tape that recorded `loss`.
          loss: the scalar to differentiate (`compute_loss(...).loss`).
          variables: what to update: any subset of the variables `optimizer`
            was registered for (the others keep their values and slots);
            default: all of them.
          optimizer: `self.optimizer` (default) or one from `add_optimizer`.

        Raises:
          ValueError: the loss depends on none of `variables`, or one of them
            is not registered for `optimizer` (named, with the fix).
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
        self._updater.apply(optimizer, grads, variables, loss, on_nonfinite=self._record_nonfinite)

    def _record_nonfinite(self) -> None:
        self._nonfinite_step.assign(self._step + 1)
        self._nonfinite_count.assign_add(1)

    @tf.autograph.experimental.do_not_convert
    def update_metrics(self, y, y_pred, sample_weight=None) -> None:
        """Updates the phase's metrics (train or eval) with one replica's batch.

        A head whose loss masks NaN labels (`mask_nan=True`) masks them here too.

        Args:
          y: the batch labels.
          y_pred: the model's outputs.
          sample_weight: per-example weights, or None.
        """
        nan_masked = frozenset(t.head for t in (self.loss.flat_terms() if self.loss else []) if t.mask_nan)
        metrics.update(self._phase_metrics(), y, y_pred, sample_weight, nan_masked=nan_masked)

    def _loss_fits_outputs(self, y_pred) -> bool:
        """Whether the default eval_step can apply the loss to the model's outputs.

        A custom train_step may feed the loss heads it builds itself (a
        distillation's teacher probabilities); evaluation then reports the
        metrics only, unless eval_step is overridden too.
        """
        wanted = heads.loss_heads(self.loss)
        if self.uses_default_step("train_step") or heads.outputs_have(y_pred, wanted):
            return True
        logging.warning(
            "eval_step: the loss reads heads %s, which the model's outputs do not have (train_step "
            "builds them); evaluation reports metrics only. Override eval_step to compute a loss.",
            sorted(wanted),
        )
        return False

    def uses_default_step(self, step: str) -> bool:
        """Whether the method named `step` ("train_step", "eval_step", ...) is the base class's, not overridden."""
        return getattr(type(self), step) is getattr(Trainer, step)

    def _phase_metrics(self, phase: str | None = None) -> metrics.Pairs:
        return self.eval_metrics if (phase or self._phase) == "eval" else self.metrics
