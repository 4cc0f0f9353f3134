"""The phases a researcher calls on a trainer: `fit`, `evaluate`, `predict`, `restore`, `export`.

Each phase is run by the trainer's `Controller` (the host loop, written
against `framework.loop.runner.Runner`), made at the first phase that needs it;
`evaluate` and `predict` by its `Evaluator` (`framework.loop.evaluation`).
`Phases` is a base of `framework.Trainer`; the trainer says what a step is,
the Controller when steps run.

`evaluate`, `predict` and `export` on a trainer that has neither trained
nor restored start from its workdir's latest checkpoint (the run's state),
and log its step; `from_workdir` rebuilds a finished run's trainer
(`framework.trainer.reload`).
"""

from __future__ import annotations

import os

from absl import logging

from framework.loop.controller import Controller
from framework.outputs import console
from framework.trainer import modes, reload


class Phases:
    """`fit`, `evaluate`, `predict` and `restore`, delegated to the trainer's Controller and its Evaluator."""

    _controller: Controller | None = None

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
        self._start_from_run(dataset)
        return self.controller.evaluator.evaluate(dataset)

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
        self._start_from_run(dataset)
        return self.controller.evaluator.predict(dataset)

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
        return self.controller.restore(which)

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
        self._start_from_run()
        if path is None:
            if not self.workdir:
                raise ValueError("export() needs a path, or a workdir to write export/<step> in.")
            path = os.path.join(self.workdir, "export", str(self.step))
        return modes.write_export(self, path)

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

    def _start_from_run(self, dataset=None) -> None:
        """Before evaluate/predict/export on a trainer that has neither trained nor restored: the latest checkpoint."""
        controller = self.controller
        if controller.state_chosen or not self.workdir:
            return
        step = controller.restore("latest", dataset)
        console.show_info()
        if step is None:
            logging.info("No checkpoint in %s: using the weights as built, untrained.", self.workdir)
        else:
            logging.info(
                "Starting from the latest checkpoint of %s: step %d. trainer.restore(which) picks another.",
                self.workdir,
                step,
            )
