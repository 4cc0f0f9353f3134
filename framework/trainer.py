"""Trainer: build hooks, the per-replica step, and the fit/evaluate phases.

    class Trainer:
        __init__:  strategy <- config.distribution; under strategy.scope():
                   model, optimizer, loss, metrics <- build_* hooks
        fit():
            for epoch in epochs:
                reset metrics; iterator = train input's iterator for epoch
                while the epoch has steps left:
                    n = steps to the next log point (<= steps_per_execution)
                    train_fn(iterator, n)          # n x strategy.run(train_step)
                    at log points: loss means, metric results -> logs
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

import contextlib
from typing import Any, NamedTuple

import keras
import ml_collections
import tensorflow as tf
from absl import logging

from framework import (
    checks,
    distribute,
    heads,
    keras_internals,
    loop,
    metrics,
    optimizer_builder,
    precision,
    runconfig,
    state,
    updates,
)
from framework import config as config_lib
from framework.controller import Controller
from framework.losses import Loss


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


class Trainer:
    """Subclass and implement `build_model`, `build_train_dataset`, `build_loss`.

    A subclass's `__init__` may load data before calling `super().__init__`,
    but should not run TensorFlow ops there: the strategy (and
    `config.distribution.cpu_devices`) is set up in `Trainer.__init__`, and
    logical devices cannot be created once TensorFlow has started.

    Checkpoints hold every variable of the run (`framework.state`), except
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

    # Attributes the framework sets: not walked for variables to checkpoint (`framework.state`).
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
        checks.workdir(workdir)
        self.workdir = workdir
        self.strategy = strategy or distribute.make_strategy(self.config.distribution)
        distribute.log_strategy(self.strategy)
        checks.batch_size(self.config, self.strategy)
        self.is_chief = distribute.is_chief(self.strategy)
        keras.utils.set_random_seed(self.config.seed)
        if self.config.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.epoch = 0
        self.resumed_at_step = 0
        self._controller: Controller | None = None
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
          (one pass is an epoch) or infinite with `config.steps_per_epoch` set;
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
        """Keras metrics (a list, or a dict head -> list), updated in train and eval steps."""
        return []

    def build_eval_metrics(self) -> list | dict | None:
        """Metrics for evaluation only (default None: the same as build_metrics())."""
        return None

    def build_callbacks(self) -> list:
        """Keras callbacks and `framework.Periodic` hooks for every `fit()`."""
        return []

    def build_optimizer(self) -> keras.optimizers.Optimizer:
        """Default: `config.optimizer` (name, schedule, weight decay, EMA); see framework.optimizer_builder."""
        return optimizer_builder.build(self.config.optimizer)

    def add_optimizer(self, optimizer: keras.optimizers.Optimizer, variables, *, name: str | None = None):
        """Registers a second optimizer (a GAN's) for `apply_gradients(optimizer=...)`.

        Call it in a build hook (under the strategy scope): `self.d_opt = self.add_optimizer(
        keras.optimizers.Adam(), self.disc)`. `variables`: a keras Layer, a list or a callable,
        resolved before tracing. Returns the optimizer to use (loss-scaled under mixed_float16).
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
        """The model's outputs for one batch (`x`, or `(x, y[, sample_weight])` whose labels are ignored)."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        return self._forward(x, training=False)

    # The step helpers need no autograph (converting them cost seconds per trace);
    # a custom train_step calling them is still converted.
    @tf.autograph.experimental.do_not_convert
    def compute_loss(
        self, y, y_pred, sample_weight=None, *, loss: Loss | None = None, prefix: str = ""
    ) -> StepLoss:
        """Evaluates `loss` (default: `self.loss`) with global reductions.

        Returns the total to differentiate (its value is the global loss; its
        gradient is this replica's share, so the optimizer's sum over
        replicas gives the global gradient) and its logs, prefixed with
        `prefix`: `loss`; `loss/<term>` when there are several terms;
        `loss/<term>/raw` (unweighted) when a term's weight is not 1. Log
        values are `framework.Weighted` (`.value`): means over steps weigh
        each step by the term's global weight sum or example count.
        """
        loss = loss if loss is not None else self.loss
        if loss is None:
            raise ValueError("compute_loss() needs a loss: build_loss() returned None.")
        labelled = {t.head for t in loss.flat_terms() if t.reads_labels}
        heads.check_batch(y, y_pred, labelled, sample_weight)
        result = loss(y, y_pred, sample_weight, model=self.model, step=self._step)
        return StepLoss(result.total, result.logs(prefix))

    @tf.autograph.experimental.do_not_convert
    def apply_gradients(self, tape: tf.GradientTape, loss: tf.Tensor, variables=None, optimizer=None) -> None:
        """Differentiates `loss`, then updates `variables` unless something is non-finite.

        `optimizer`: `self.optimizer` or one from `add_optimizer`; `variables`
        default to those it was registered for. With float16 the loss is
        scaled here; `framework.updates` does the rest on every replica alike
        (all-reduce, unscale, clip, accumulate, skip overflowing steps). A
        non-finite loss (or, unscaled, gradient) skips the update and stops
        training with an error naming the step.
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
        """Updates the phase's metrics; a head whose loss masks NaN labels masks them here too."""
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

    # ---- state ---------------------------------------------------------------

    @property
    def step(self) -> int:
        return int(self._step.numpy())

    def metric_results(self, phase: str = "train") -> dict[str, float]:
        """Current values of the train (or "eval") metrics, summed over replicas, read on the host."""
        return metrics.read(self._phase_metrics(phase), self.strategy)

    def reset_metrics(self, phase: str = "train") -> None:
        metrics.reset(self._phase_metrics(phase))

    def build_state(self, element_spec) -> None:
        """Creates model, metric and optimizer variables for inputs of `element_spec`.

        Runs before anything is traced or restored; a no-op once they exist.
        """
        with self.strategy.scope():
            zeros = tf.nest.map_structure(
                lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), element_spec
            )
            x, y, _ = keras.utils.unpack_x_y_sample_weight(zeros)
            unbuilt = [p for p in self.metrics + self.eval_metrics if not p[1].variables]
            if not self.model.built or unbuilt:
                y_pred = self.model_outputs(x)
                if unbuilt and y is not None:
                    metrics.build(unbuilt, y, y_pred)
            self._updater.build()

    def model_outputs(self, x):
        """The model's outputs for `x`, leaving its existing non-trainable state as it was.

        A call draws from the model's SeedGenerators (a VAE's sampling layer);
        Keras builds a model symbolically and draws nothing, so their states
        are put back: the run's random stream stays the one Keras' fit draws.
        """
        existing = [(v, v.numpy()) for v in self.model.non_trainable_variables]
        y_pred = self.model(x, training=False)
        for variable, value in existing:
            variable.assign(value)
        return y_pred

    # ---- what the host loop asks (framework.runner.Runner) ---------------------------

    def check_train_input(self, element_spec, first_batches: tf.data.Dataset) -> None:
        """Checks the training input against the step and builds the state for it.

        Raises:
          TypeError, ValueError: the batches cannot feed the step; the message names why.
        """
        default_step = self.uses_default_step("train_step")
        checks.element_spec(element_spec, default_step=default_step)
        self.build_state(element_spec)
        checks.first_batch(self.loss if default_step else None, self.model_outputs, first_batches)

    def checkpoint_state(self) -> dict[str, list]:
        """The variables a checkpoint holds, in named groups (see `framework.state`)."""
        return state.collect(
            self,
            counters=[self._step],
            updater=self._updater,
            skip=self._FRAMEWORK_ATTRIBUTES,
            given=self._given_attributes,
        )

    def run_record(self) -> dict:
        """The config as this trainer runs it (`config.json` in the workdir)."""
        built_by = (
            None if self.uses_default_step("build_optimizer") else f"{type(self).__name__}.build_optimizer"
        )
        return runconfig.record(self.config, self._updater.named_optimizers(), built_by=built_by)

    def set_step(self, step: int) -> None:
        """Sets the global step (a restore that goes on after an offending batch)."""
        self._step.assign(step)

    def nonfinite_step(self) -> int:
        """The step whose loss or gradients were non-finite since the last clear; -1: none."""
        return int(self._nonfinite_step.numpy())

    def clear_nonfinite(self) -> None:
        """Forgets the non-finite step: the compiled train function goes on."""
        self._nonfinite_step.assign(-1)

    def optimizer_logs(self) -> dict[str, float]:
        """`lr` (`lr/<name>` for added optimizers), the updater's logs, and `nonfinite_steps` under "skip"."""
        out = {}
        for i, (name, optimizer) in enumerate(self._updater.named_optimizers()):
            out["lr" if i == 0 else f"lr/{name}"] = optimizer_builder.current_learning_rate(optimizer)
        out.update(self._updater.logs())
        if self.config.nan_policy == "skip":
            out["nonfinite_steps"] = float(self._nonfinite_count.numpy())
        return out

    def fit_schedules(self, total_updates: int) -> None:
        """Sets the length of `decay_steps = 0` schedules to the run's `total_updates`."""
        for _, optimizer in self._updater.named_optimizers():
            optimizer_builder.fit_schedule(optimizer, total_updates)

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

    # ---- phases (run by the Controller) --------------------------------------------

    @property
    def controller(self) -> Controller:
        """The host loop that runs this trainer's phases; made at the first phase that needs it."""
        if self._controller is None:
            self._controller = Controller(self)
        return self._controller

    def fit(self, *, validate: bool = True, callbacks: list | None = None) -> list[dict[str, float]]:
        """Trains for `config.epochs` (or `config.train_steps` updates), resuming from the workdir's checkpoints.

        Args:
          validate: evaluate every `config.eval_every_epochs` epochs (a
            step-based run: every `config.eval_every_steps` updates and at its
            end) when `build_eval_dataset` returns a dataset.
          callbacks: Keras callbacks and `framework.Periodic` hooks, after `build_callbacks()`'s.

        Returns:
          One log dict per epoch (a step-based run: per evaluation period)
          trained in this call (loss, loss/<term>, metrics, lr, val/... at
          evaluation epochs); [] when the run had finished.

        Raises:
          FloatingPointError: a non-finite step under `config.nan_policy` "raise"
            (or "restore" past its retries).
          SystemExit: on SIGTERM, after saving a checkpoint (code 0).
        """
        return self.controller.fit(validate=validate, callbacks_=callbacks)

    def evaluate(self, dataset=None) -> dict[str, float]:
        """Runs `eval_step` over a dataset; returns its loss and eval metric values.

        Args:
          dataset: None (the validation set of `build_eval_dataset`, built once
            per Trainer), a `tf.data.Dataset` of global batches (what Keras'
            `evaluate` takes), or a function `input_context -> tf.data.Dataset`
            of per-replica batches. A dataset given here is read anew at each call.

        Returns:
          `loss`, `loss/<term>`... and the eval metrics' results, as floats.

        Raises:
          ValueError: no dataset given and `build_eval_dataset` returns None.
          TypeError: `dataset` is neither a dataset nor a function.
        """
        return self.controller.evaluate(dataset)

    def predict(self, dataset):
        """The outputs of `predict_step` (the model, by default) over a whole dataset, in order.

        Args:
          dataset: a `tf.data.Dataset` of global batches of `x` (or `(x, y[, w])`;
            labels are ignored), or a function `input_context -> tf.data.Dataset`
            of per-replica batches (each step's rows then come in replica order).
            A short last batch is fine.

        Returns:
          numpy arrays nested like the model's outputs, one row per example.
        """
        return self.controller.predict(dataset)

    def restore(self, which: str | int = "latest") -> int | None:
        """Loads a checkpoint of the workdir.

        Args:
          which: "latest", "best" (by `config.checkpoint.best_metric`) or a step number.

        Returns:
          The checkpoint's step; None when the workdir has no checkpoint ("latest").

        Raises:
          ValueError: no workdir, no such checkpoint (the steps present are
            listed), or no dataset to build the state from before `fit()`.
        """
        return self.controller.restore(which)
