"""The phases a researcher calls on a trainer: `fit`, `evaluate`, `predict`, `restore`.

Each phase is run by the trainer's `Controller` (the host loop, written
against `framework.runner.Runner`), made at the first phase that needs it;
`evaluate` and `predict` by its `Evaluator` (`framework.evaluation`).
`Phases` is a base of `framework.Trainer`; the trainer says what a step is,
the Controller when steps run.
"""

from __future__ import annotations

from framework.controller import Controller


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
        return self.controller.evaluator.evaluate(dataset)

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
        return self.controller.evaluator.predict(dataset)

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
