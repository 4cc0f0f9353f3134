"""A trainer's variables: built before anything is traced, grouped for checkpoints.

`TrainerState` is a base of `framework.Trainer`: the Controller calls
`check_train_input` once per run (the input checks of `framework.trainer.input_checks`,
then `build_state`), `checkpoint_state` for what a checkpoint holds
(`framework.checkpointing.variable_groups`), and `run_record` for the workdir's `config.json`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from framework import metrics
from framework.checkpointing import variable_groups
from framework.outputs import recorded_config
from framework.trainer import input_checks


class TrainerState:
    """Builds a trainer's variables for an input, checks the input, names the checkpoint groups.

    Reads what `Trainer.__init__` sets: the strategy, model, metrics, loss,
    config, the step counter and the updater of its optimizers.
    """

    def build_state(self, element_spec=None) -> None:
        """Creates model, metric and optimizer variables for inputs of `element_spec`.

        Runs before anything is traced or restored; a no-op once they exist.
        Without a spec, a model built with its input shape (`keras.Input`)
        suffices; metrics that make their variables on first use then stay unbuilt.

        Raises:
          ValueError: no `element_spec` and the model is not built.
        """
        if element_spec is None and not self.model.built:
            raise ValueError(
                f"{type(self).__name__}: nothing to build the model's variables from: the model has no "
                "input shape and the trainer no input. Give the model a keras.Input, have "
                "build_train_dataset or build_eval_dataset return a dataset, or pass one to evaluate/predict."
            )
        with self.strategy.scope():
            if element_spec is None:
                self._updater.build()
                return
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

    def check_train_input(self, element_spec, first_batches: tf.data.Dataset) -> None:
        """Checks the training input against the step and builds the state for it.

        Raises:
          TypeError, ValueError: the batches cannot feed the step; the message names why.
        """
        default_step = self.uses_default_step("train_step")
        input_checks.element_spec(element_spec, default_step=default_step)
        self.build_state(element_spec)
        input_checks.first_batch(self.loss if default_step else None, self.model_outputs, first_batches)

    def checkpoint_state(self) -> dict[str, list]:
        """The variables a checkpoint holds, in named groups (see `framework.checkpointing.variable_groups`)."""
        return variable_groups.collect(
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
        return recorded_config.record(self.config, self._updater.named_optimizers(), built_by=built_by)
