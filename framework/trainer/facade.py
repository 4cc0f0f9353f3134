"""`Trainer`'s base: the methods it offers the researcher and the host loop, each kept by a component.

`TrainerFacade` holds the components `framework.Trainer.__init__` makes
(`framework.trainer.components`) and forwards to them: the phases (`fit`, `evaluate`,
`predict`, `restore`, `export`; `framework.trainer.phases`), the variables and
checkpoint groups (`framework.trainer.variables`), the host's reads between
compiled calls (`framework.trainer.host_reads`) and the compiled functions
(`framework.trainer.compiled_steps`). Together with the Trainer's own methods they
are the `framework.loop.runner.Runner` the Controller drives.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from framework.loop import step_function
from framework.loop.controller import Controller
from framework.trainer import reload
from framework.trainer.components import TrainerComponents


class TrainerFacade:
    """The phases, the state, the host reads and the compiled functions of a trainer.

    Args:
      components: the trainer's components, made in `Trainer.__init__`.
    """

    # The attribute this class sets: not walked for variables to checkpoint
    # (`framework.checkpointing.variable_groups`).
    FACADE_ATTRIBUTES = frozenset({"_components"})

    def __init__(self, components: TrainerComponents):
        self._components = components

    # ---- phases ------------------------------------------------------------

    @property
    def controller(self) -> Controller:
        """The host loop that runs this trainer's phases; made at the first phase that needs it."""
        return self._components.phases.controller

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
        return self._components.phases.fit(validate=validate, callbacks=callbacks)

    def evaluate(self, dataset=None) -> dict[str, float]:
        """Runs `eval_step` over a dataset; returns its loss and eval metric values.

        A trainer that has neither trained nor restored first restores its
        workdir's latest checkpoint (see `restore`); the log names its step.

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
        return self._components.phases.evaluate(dataset)

    def predict(self, dataset):
        """The outputs of `predict_step` (the model, by default) over a whole dataset, in order.

        Starts from the workdir's latest checkpoint as `evaluate` does.

        Args:
          dataset: a `tf.data.Dataset` of global batches of `x` (or `(x, y[, w])`;
            labels are ignored), or a function `input_context -> tf.data.Dataset`
            of per-replica batches (each step's rows then come in replica order).
            A short last batch is fine.

        Returns:
          numpy arrays nested like the model's outputs, one row per example.
        """
        return self._components.phases.predict(dataset)

    def restore(self, which: str | int = "latest") -> int | None:
        """Loads a checkpoint of the workdir; `evaluate`, `predict` and `export` then use it.

        Before `fit()` the variables are built from the eval dataset, else the
        training dataset's element spec, else the model alone (built with a
        `keras.Input`). `fit()` itself resumes from the latest checkpoint.

        Args:
          which: "latest", "best" (by `config.checkpoint.best_metric`) or a step number.

        Returns:
          The checkpoint's step; None when the workdir has no checkpoint ("latest").

        Raises:
          ValueError: no workdir, no such checkpoint (the steps present are
            listed), "best" when the run ranked none (the logged keys are
            listed), or nothing to build the variables from.
        """
        return self._components.phases.restore(which)

    def export(self, path: str | None = None) -> str:
        """Writes a SavedModel of the model (the EMA weights when `config.optimizer.ema`), checked by reloading it.

        Starts from the workdir's latest checkpoint as `evaluate` does.

        Args:
          path: where to write; default `workdir/export/<step>`.

        Returns:
          The path written.

        Raises:
          ValueError: no `path` and no workdir.
          RuntimeError: the reloaded SavedModel predicts differently.
        """
        return self._components.phases.export(path)

    @classmethod
    def from_workdir(cls, workdir: str, which: str | int = "latest", *, overrides=None, **kwargs):
        """The trainer of a finished run, with one of its checkpoints restored.

        Built from the run's `config.json` (`framework.config.load`): what the
        run was, not what the config file says now. `config.distribution` is
        this process's default (the devices here), not the run's.

        Args:
          workdir: the run's workdir.
          which: "latest", "best" (by the run's `checkpoint.best_metric`) or a step number.
          overrides: dotted keys to change, as `--config.key=` flags would
            (`{"distribution.cpu_devices": 2}`); changing what the
            checkpoints hold (`model`, `optimizer`, ...) warns.
          **kwargs: the other arguments of the trainer's constructor.

        Returns:
          The trainer, ready for `evaluate(dataset)`, `predict(dataset)`,
          `export()`; `fit()` resumes the run.

        Raises:
          FileNotFoundError: no such workdir, no config.json, or no checkpoint (named).
          ValueError: no checkpoint `which`, or "best" when the run ranked none
            (the metrics it logged and the key to set are named).
          ConfigError: an override's key or value is wrong.
        """
        return reload.from_workdir(cls, workdir, which, overrides, **kwargs)

    # ---- variables and checkpoints (`framework.trainer.variables`) ----------------

    def build_state(self, element_spec=None) -> None:
        """Creates model, metric and optimizer variables for inputs of `element_spec`.

        Runs before anything is traced or restored; a no-op once they exist.
        Without a spec, a model built with its input shape (`keras.Input`)
        suffices; metrics that make their variables on first use then stay unbuilt.

        Raises:
          ValueError: no `element_spec` and the model is not built.
        """
        self._components.state.build_state(element_spec)

    def model_outputs(self, x):
        """The model's outputs for `x`, leaving its existing non-trainable state (seed generators) as it was."""
        return self._components.state.model_outputs(x)

    def check_train_input(self, element_spec, first_batches: tf.data.Dataset) -> None:
        """Checks the training input against the step and builds the state for it.

        Raises:
          TypeError, ValueError: the batches cannot feed the step; the message names why.
        """
        self._components.state.check_train_input(element_spec, first_batches)

    def checkpoint_state(self) -> dict[str, list]:
        """The variables a checkpoint holds, in named groups (see `framework.checkpointing.variable_groups`)."""
        return self._components.state.checkpoint_state()

    def run_record(self) -> dict:
        """The config as this trainer runs it (`config.json` in the workdir)."""
        return self._components.state.run_record()

    # ---- host reads (`framework.trainer.host_reads`) -----------------------------------

    @property
    def step(self) -> int:
        """Training steps completed (the global step), read on the host."""
        return self._components.host.step

    def metric_results(self, phase: str = "train") -> dict[str, float]:
        """Current values of the train (or eval) metrics, summed over replicas, read on the host.

        Every worker must call it alike: reading a metric is a collective.

        Args:
          phase: "train" or "eval".

        Returns:
          Metric name -> value; vector results give `name/<i>`, dict results `name/<key>`.
        """
        return self._components.host.metric_results(phase)

    def reset_metrics(self, phase: str = "train") -> None:
        """Resets the train (or "eval") metrics; the Controller does it at each epoch and evaluation."""
        self._components.host.reset_metrics(phase)

    def set_step(self, step: int) -> None:
        """Sets the global step (a restore that goes on after an offending batch)."""
        self._components.host.set_step(step)

    def nonfinite_step(self) -> int:
        """The step whose loss or gradients were non-finite since the last clear; -1: none."""
        return self._components.host.nonfinite_step()

    def clear_nonfinite(self) -> None:
        """Forgets the non-finite step: the compiled train function goes on."""
        self._components.host.clear_nonfinite()

    def optimizer_logs(self) -> dict[str, float]:
        """`lr` (`lr/<name>` for added optimizers), the updater's logs, and `nonfinite_steps` under "skip"."""
        return self._components.host.optimizer_logs()

    def after_train_call(self) -> dict:
        """What the host reads after each train call, as tensors: the compiled call reads them itself.

        Keys: "optimizer" (`optimizer_logs()`'s), "nonfinite_step" and "metrics"
        (`metric_results()`'s; left out when a metric cannot be read in a graph).
        """
        return self._components.host.after_train_call()

    def fit_schedules(self, total_updates: int) -> None:
        """Sets the length of `decay_steps = 0` schedules to the run's `total_updates`."""
        self._components.host.fit_schedules(total_updates)

    # ---- compiled functions (`framework.trainer.compiled_steps`) -----------------------

    def eval_phase(self) -> contextlib.AbstractContextManager:
        """Eval steps trace and run in here: they feed the eval metrics and see the EMA weights."""
        return self._components.compiled.eval_phase()

    def make_train_function(self) -> step_function.StepFunction:
        """The compiled train function; it stops after a non-finite step unless nan_policy is "skip"."""
        return self._components.compiled.make_train_function()

    def make_eval_function(self) -> step_function.StepFunction:
        """The compiled eval function (after `build_state` for the eval input)."""
        return self._components.compiled.make_eval_function()

    def make_predict_function(self):
        """The compiled predict function: `fn(iterator) -> one batch of predict_step outputs`."""
        return self._components.compiled.make_predict_function()
