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

import json
import math
import os
import time
from typing import Any, NamedTuple

import keras
import ml_collections
import tensorflow as tf
from absl import logging

from framework import checkpoint, distribute, heads, logs, loop, metrics, precision, state, updates
from framework import config as config_lib
from framework.data import DistributedInput
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
        initial, dtype=tf.int64, trainable=False, name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )  # fmt: skip


class Trainer:
    """Subclass and implement `build_model`, `build_train_dataset`, `build_loss`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict | dict | None = None,
        workdir: str | None = None,
        *,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.config = config_lib.resolve(config)
        self.workdir = workdir
        self.strategy = strategy or distribute.make_strategy(self.config.distribution)
        self.is_chief = distribute.is_chief(self.strategy)
        keras.utils.set_random_seed(self.config.seed)
        if self.config.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.epoch = 0
        self._train_input = self._eval_input = None
        self._train_fn = self._eval_fn = None
        self._checkpoints: checkpoint.Checkpoints | None = None
        self._auto_steps = 32
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
                heads.check_loss_heads(self.model, self.loss)
            self.metrics = metrics.collect(self.model, self.build_metrics())
            self._step = _counter("step", 0)
            self._nonfinite_step = _counter("nonfinite_step", -1)

    # ---- hooks -------------------------------------------------------------

    def build_model(self) -> keras.Model:
        raise NotImplementedError("Implement build_model() -> keras.Model.")

    def build_train_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        raise NotImplementedError(
            "Implement build_train_dataset(input_context) -> tf.data.Dataset of per-replica batches."
        )

    def build_eval_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset | None:
        return None

    def build_loss(self) -> Loss | None:
        if type(self).train_step is Trainer.train_step:
            raise NotImplementedError("Implement build_loss() -> framework.losses.Loss.")
        return None

    def build_metrics(self) -> list | dict:
        return []

    def build_optimizer(self) -> keras.optimizers.Optimizer:
        cfg = self.config.optimizer
        try:
            return keras.optimizers.deserialize(
                {"class_name": cfg.name, "config": {"learning_rate": cfg.learning_rate}}
            )
        except (ValueError, TypeError) as e:
            raise config_lib.ConfigError(
                f"config.optimizer.name={cfg.name!r} is not a Keras optimizer ({e})."
            ) from None

    def add_optimizer(self, optimizer: keras.optimizers.Optimizer, variables, *, name: str | None = None):
        """Registers a second optimizer (a GAN's) for `apply_gradients(optimizer=...)`.

        Call it in a build hook (under the strategy scope): `self.d_opt = self.add_optimizer(
        keras.optimizers.Adam(), self.disc)`. `variables`: a keras Layer, a list or a callable,
        resolved before tracing. Returns the optimizer to use (loss-scaled under mixed_float16).
        """
        return self._updater.add(optimizer, variables, name=name)

    # ---- the step ----------------------------------------------------------

    def train_step(self, batch) -> dict:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        with tf.GradientTape() as tape:
            y_pred = self._forward(x, training=True)  # XLA-compiled under config.jit_compile
            loss, step_logs = self.compute_loss(y, y_pred, sample_weight)
        self.apply_gradients(tape, loss)
        self.update_metrics(y, y_pred, sample_weight)
        return step_logs

    def eval_step(self, batch) -> dict:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        y_pred = self._forward(x, training=False)
        step_logs = {}
        if self.loss is not None:
            step_logs = self.compute_loss(y, y_pred, sample_weight).logs
        self.update_metrics(y, y_pred, sample_weight)
        return step_logs

    # The step helpers need no autograph (converting them cost seconds per trace);
    # a custom train_step calling them is still converted.
    @tf.autograph.experimental.do_not_convert
    def compute_loss(
        self, y, y_pred, sample_weight=None, *, loss: Loss | None = None, prefix: str = ""
    ) -> StepLoss:
        """Evaluates `loss` (default: `self.loss`) with global reductions.

        Returns the total to differentiate (its value is the global loss; its
        gradient is this replica's share, so the optimizer's sum over
        replicas gives the global gradient) and `loss`, `loss/<term>`,
        `loss/<term>/raw` logs, prefixed with `prefix`.
        """
        loss = loss if loss is not None else self.loss
        if loss is None:
            raise ValueError("compute_loss() needs a loss: build_loss() returned None.")
        heads.check_batch(y, y_pred, {t.head for t in loss.flat_terms()})
        result = loss(y, y_pred, sample_weight, model=self.model, step=self._step.read_value())
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
        finite = self._updater.apply(optimizer, grads, variables, loss)
        self._nonfinite_step.assign(tf.where(finite, self._nonfinite_step, self._step + 1))

    @tf.autograph.experimental.do_not_convert
    def update_metrics(self, y, y_pred, sample_weight=None) -> None:
        metrics.update(self.metrics, y, y_pred, sample_weight)

    # ---- state ---------------------------------------------------------------

    @property
    def step(self) -> int:
        return int(self._step.numpy())

    def metric_results(self) -> dict[str, float]:
        """Current metric values (summed over replicas), read on the host."""
        return metrics.read(self.metrics, self.strategy)

    def reset_metrics(self) -> None:
        metrics.reset(self.metrics)

    def _build_state(self, element_spec) -> None:
        """Creates model and optimizer variables before anything is traced or restored."""
        with self.strategy.scope():
            if not self.model.built:
                x = keras.utils.unpack_x_y_sample_weight(element_spec)[0]
                x = tf.nest.map_structure(lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), x)
                self.model(x, training=False)
            self._updater.build()

    # ---- phases ------------------------------------------------------------------

    def _steps_per_call(self) -> int:
        return self.config.steps_per_execution or self._auto_steps

    # ---- checkpoints -------------------------------------------------------------

    def _open_checkpoints(self, *, writer: bool) -> checkpoint.Checkpoints | None:
        if self._checkpoints is None and self.workdir:
            self._checkpoints = checkpoint.Checkpoints(
                os.path.join(self.workdir, "checkpoints"),
                self.config.checkpoint,
                writer=writer and self.is_chief,
            )
        return self._checkpoints

    def restore(self, which: str | int = "latest") -> int | None:
        """Loads a checkpoint of this workdir: "latest", "best" or a step. Returns its step."""
        if self._train_input is None and not self._has_eval():
            raise ValueError("restore() before fit() needs build_eval_dataset() to return a dataset.")
        self._build_state((self._train_input or self._eval_input).element_spec)
        ckpts = self._open_checkpoints(writer=self._train_input is not None)
        if ckpts is None:
            raise ValueError("restore() needs a workdir.")
        groups = state.collect(self)
        if which == "latest":
            meta = ckpts.restore_latest(groups)
        else:
            step = ckpts.best_step() if which == "best" else int(which)
            if step is None or step not in ckpts.steps():
                raise ValueError(
                    f"No checkpoint {which!r} in {ckpts.directory}; it holds steps {ckpts.steps()}."
                )
            meta = ckpts.restore(groups, step)
        if meta is None:
            return None
        self.epoch = meta["epoch"]
        self._resume = meta
        return meta["step"]

    def _save(
        self, *, step_in_epoch: int = 0, sums: logs.Sums | None = None, metrics=None, final=False
    ) -> None:
        if self._checkpoints is None:
            return
        meta = {
            "step": self.step, "epoch": self.epoch, "step_in_epoch": step_in_epoch, "final": final,
            "epoch_sums": dict(sums.sums) if sums else {}, "trainer": type(self).__name__,
        }  # fmt: skip
        if self._checkpoints.save(self.step, state.collect(self), meta, metrics):
            logging.info("Checkpoint at step %d (epoch %d%s).", self.step, self.epoch,
                         f", {step_in_epoch} steps in" if step_in_epoch else "")  # fmt: skip

    # ---- phases ------------------------------------------------------------------

    def _prepare_train(self) -> None:
        if self._train_fn is not None:
            return
        self._train_input = DistributedInput(
            self.strategy, self.build_train_dataset, "build_train_dataset",
            steps_per_epoch=self.config.steps_per_epoch,
        )  # fmt: skip
        self._build_state(self._train_input.element_spec)
        xla = self._xla_plan("train_step")
        self._train_fn = loop.make_step_function(
            self.strategy, self._updater.counting_examples(self.train_step), where="train_step",
            on_step=lambda: self._step.assign_add(1),
            should_stop=lambda: self._nonfinite_step >= 0, jit_compile=xla == "step",
        )  # fmt: skip
        self._run_log = logs.RunLog(self.workdir, enabled=self.is_chief)
        if self._open_checkpoints(writer=True) is not None:
            self.restore("latest")
        if self.is_chief and self.workdir:
            tf.io.gfile.makedirs(self.workdir)
            with tf.io.gfile.GFile(os.path.join(self.workdir, "config.json"), "w") as f:
                json.dump(self.config.to_dict(), f, indent=2, sort_keys=True, default=str)

    def _xla_plan(self, step: str) -> str | None:
        custom = getattr(type(self), step) is not getattr(Trainer, step)
        plan = loop.xla_plan(self.strategy, self.config.jit_compile, custom_step=custom, where=step)
        if plan == "forward" and self._forward is self.model:
            self._forward = loop.compile_forward(self.model)
        return plan

    def fit(self, *, validate: bool = True) -> list[dict[str, float]]:
        """Trains for `config.epochs`, resuming from the workdir's checkpoints; one log dict per epoch.

        validate: evaluate every `config.eval_every_epochs` epochs when
          `build_eval_dataset` returns a dataset.
        """
        self._resume = None
        self._prepare_train()
        self.resumed_at_step = self.step
        if self._resume:
            logging.info("Resumed from the checkpoint at step %d (epoch %d).", self.step, self.epoch)
        self._nonfinite_step.assign(-1)
        has_eval = validate and self._has_eval()
        progress = logs.Progress(enabled=self.is_chief)
        history = []
        cfg = self.config.checkpoint
        with checkpoint.Preemption() as preemption:
            while self.epoch < self.config.epochs:
                epoch_logs = self._train_epoch(progress, preemption)
                if has_eval and (self.epoch + 1) % self.config.eval_every_epochs == 0:
                    val = {f"val/{k}": v for k, v in self.evaluate().items()}
                    self._run_log.write("eval", self.step, self.epoch + 1, val)
                    epoch_logs.update(val)
                self.epoch += 1
                self._run_log.write("epoch", self.step, self.epoch, epoch_logs)
                progress.end_epoch(epoch_logs)
                history.append(epoch_logs)
                final = self.epoch == self.config.epochs
                due = cfg.every_epochs and self.epoch % cfg.every_epochs == 0
                if final or due or (cfg.every_steps and self.step % cfg.every_steps == 0):
                    self._save(metrics=epoch_logs, final=final)
        if self._checkpoints is not None:
            self._checkpoints.close()  # waits for pending writes; reopened on demand
            self._checkpoints = None
        return history

    def _train_epoch(self, progress: logs.Progress, preemption: checkpoint.Preemption) -> dict[str, float]:
        resume, self._resume = self._resume or {}, None
        done = resume.get("step_in_epoch", 0)
        if not done:
            self.reset_metrics()
        iterator = self._train_input.iterator(self.epoch, skip=done)
        total = self._train_input.steps
        progress.start_epoch(self.epoch + 1, self.config.epochs, total)
        epoch, interval = logs.Sums(resume.get("epoch_sums"), done), logs.Sums()
        interval_start = time.perf_counter()
        every, save_every = self.config.log_every_steps, self.config.checkpoint.every_steps
        while done < total:
            step = self.step
            n = min(self._steps_per_call(), total - done, every - step % every)
            if save_every:
                n = min(n, save_every - step % save_every)
            call_start = time.perf_counter()
            sums, last = self._train_fn(iterator, tf.constant(n, tf.int64))
            self._check_finite(last)
            if not self.config.steps_per_execution:
                self._tune_steps(n, time.perf_counter() - call_start)
            epoch.add(sums, n)
            interval.add(sums, n)
            done += n
            point = None
            if (step + n) % every == 0 or done == total:
                rate = interval.steps / max(time.perf_counter() - interval_start, 1e-9)
                point = {**interval.means(), **self.metric_results(), **self._updater.logs()}
                self._run_log.write("train", self.step, self.epoch + 1, {**point, "steps_per_sec": rate})
                progress.update(done, point, rate=rate)
                interval, interval_start = logs.Sums(), time.perf_counter()
            else:
                progress.update(done)
            if preemption.requested:
                self._save(step_in_epoch=done, sums=epoch)
                if self._checkpoints is not None:
                    self._checkpoints.wait()
                logging.warning("Preempted: saved step %d; rerun the same command to resume.", self.step)
                raise SystemExit(0)
            if save_every and self.step % save_every == 0 and done < total:
                self._save(step_in_epoch=done, sums=epoch, metrics=point)
        return {**epoch.means(), **self.metric_results(), **self._updater.logs()}

    def _tune_steps(self, n: int, seconds: float) -> None:
        """Auto steps_per_execution: aim for ~0.2 s per compiled call."""
        if self._train_fn.experimental_get_tracing_count() and seconds > 0:
            self._auto_steps = int(min(1000, max(1, 0.2 / (seconds / n))))

    def _check_finite(self, last: dict) -> None:
        bad = int(self._nonfinite_step.numpy())
        if bad < 0:
            return
        terms = [f"{k}={float(v)}" for k, v in last.items() if not math.isfinite(float(v))]
        what = (
            f"loss at step {bad}: {', '.join(terms)}"
            if terms
            else f"gradients at step {bad} (the loss was finite)"
        )
        raise FloatingPointError(
            f"Non-finite {what}. The update was skipped; the weights hold the values before that step."
        )

    def _has_eval(self) -> bool:
        if self._eval_input is None:
            self._eval_input = DistributedInput(
                self.strategy, self.build_eval_dataset, "build_eval_dataset", optional=True
            )
        return self._eval_input.present

    def evaluate(self) -> dict[str, float]:
        """Runs `eval_step` over the whole eval dataset; returns loss and metric values."""
        if not self._has_eval():
            raise ValueError("evaluate() needs build_eval_dataset() to return a dataset.")
        if self._eval_fn is None:
            self._build_state(self._eval_input.element_spec)
            xla = self._xla_plan("eval_step")
            self._eval_fn = loop.make_step_function(
                self.strategy, self.eval_step, where="eval_step", jit_compile=xla == "step"
            )
        self.reset_metrics()
        iterator = self._eval_input.fresh_iterator()
        total, done, sums = self._eval_input.steps, 0, logs.Sums()
        while done < total:
            n = min(self._steps_per_call(), total - done)
            call_sums, _ = self._eval_fn(iterator, tf.constant(n, tf.int64))
            sums.add(call_sums, n)
            done += n
        return {**sums.means(), **self.metric_results()}
