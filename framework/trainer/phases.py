"""The phases a researcher calls on a trainer: `fit`, `evaluate`, `predict`, `restore`, `export`.

`PhaseRunner` is a component of `framework.Trainer`. Each phase is run by the
trainer's `Controller` (the host loop, written against
`framework.loop.runner.Runner`), made at the first phase that needs it;
`evaluate` and `predict` by its `Evaluator` (`framework.loop.evaluation`). The
trainer says what a step is, the Controller when steps run.

`evaluate`, `predict` and `export` on a trainer that has neither trained
nor restored start from its workdir's latest checkpoint (the run's state),
and log its step.
"""

from __future__ import annotations

import os

from absl import logging

from framework.loop.controller import Controller
from framework.loop.runner import Runner
from framework.outputs import console
from framework.trainer import modes


class PhaseRunner:
    """`fit`, `evaluate`, `predict`, `restore` and `export` of a runner, delegated to its Controller.

    Args:
      runner: the trainer whose phases these are.
    """

    def __init__(self, runner: Runner):
        self._runner = runner
        self._controller: Controller | None = None

    @property
    def controller(self) -> Controller:
        """The host loop that runs the phases; made at the first phase that needs it."""
        if self._controller is None:
            self._controller = Controller(self._runner)
        return self._controller

    def fit(self, *, validate: bool, callbacks: list | None) -> list[dict[str, float]]:
        """Trains (see `Trainer.fit`)."""
        return self.controller.fit(validate=validate, callbacks_=callbacks)

    def evaluate(self, dataset) -> dict[str, float]:
        """Evaluates, from the latest checkpoint unless trained or restored (see `Trainer.evaluate`)."""
        self._start_from_run(dataset)
        return self.controller.evaluator.evaluate(dataset)

    def predict(self, dataset):
        """Predicts, from the latest checkpoint unless trained or restored (see `Trainer.predict`)."""
        self._start_from_run(dataset)
        return self.controller.evaluator.predict(dataset)

    def restore(self, which: str | int) -> int | None:
        """Loads a checkpoint of the workdir (see `Trainer.restore`)."""
        return self.controller.restore(which)

    def export(self, path: str | None) -> str:
        """Writes a SavedModel, from the latest checkpoint unless trained or restored (see `Trainer.export`).

        Raises:
          ValueError: no `path` and no workdir.
        """
        self._start_from_run()
        workdir = self._runner.workdir
        if path is None:
            if not workdir:
                raise ValueError("export() needs a path, or a workdir to write export/<step> in.")
            path = os.path.join(workdir, "export", str(self._runner.step))
        return modes.write_export(self._runner, path)

    def _start_from_run(self, dataset=None) -> None:
        """Before evaluate/predict/export on a trainer that has neither trained nor restored: the latest checkpoint."""
        controller = self.controller
        workdir = self._runner.workdir
        if controller.state_chosen or not workdir:
            return
        step = controller.restore("latest", dataset)
        console.show_info()
        if step is None:
            logging.info("No checkpoint in %s: using the weights as built, untrained.", workdir)
        else:
            logging.info(
                "Starting from the latest checkpoint of %s: step %d. trainer.restore(which) picks another.",
                workdir,
                step,
            )
