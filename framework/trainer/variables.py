"""A trainer's variables: built before anything is traced, grouped for checkpoints.

`TrainerState` is a component of `framework.Trainer`: the Controller calls
`check_train_input` once per run (the input checks of `framework.trainer.input_checks`,
then `build_state`), `checkpoint_state` for what a checkpoint holds
(`framework.checkpointing.variable_groups`), and `run_record` for the workdir's `config.json`.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import ml_collections
import tensorflow as tf

from framework import metrics
from framework.checkpointing import variable_groups
from framework.losses import Loss
from framework.optim import updates
from framework.outputs import recorded_config
from framework.trainer import input_checks
from framework.trainer.counters import StepCounters
from framework.trainer.phase_metrics import PhaseMetrics


class TrainerState:
    """Builds a trainer's variables for an input, checks the input, names the checkpoint groups.

    Args:
      owner: the trainer: the attributes `framework.checkpointing.variable_groups` walks for variables,
        and its class's name in messages.
      strategy: the trainer's strategy (variables are built under its scope).
      config: the run config.
      model: the trainer's model.
      loss: the trainer's loss (None with a custom step).
      phase_metrics: the trainer's train and eval metrics.
      counters: the trainer's counters (the step is checkpointed).
      updater: the updater of the trainer's optimizers.
      uses_default_step: `Trainer.uses_default_step`.
      skip: attributes the trainer holds for the framework, not walked for variables.
      given: attributes set before the trainer's build hooks ran.
    """

    def __init__(
        self,
        owner,
        *,
        strategy: tf.distribute.Strategy,
        config: ml_collections.ConfigDict,
        model: keras.Model,
        loss: Loss | None,
        phase_metrics: PhaseMetrics,
        counters: StepCounters,
        updater: updates.Updater,
        uses_default_step: Callable[[str], bool],
        skip: frozenset[str],
        given: frozenset[str],
    ):
        self._owner = owner
        self._strategy = strategy
        self._config = config
        self._model = model
        self._loss = loss
        self._metrics = phase_metrics
        self._counters = counters
        self._updater = updater
        self._uses_default_step = uses_default_step
        self._skip = skip
        self._given = given

    def build_state(self, element_spec=None) -> None:
        """Creates model, metric and optimizer variables for inputs of `element_spec` (a no-op once they exist).

        Raises:
          ValueError: no `element_spec` and the model is not built.
        """
        if element_spec is None and not self._model.built:
            raise ValueError(
                f"{type(self._owner).__name__}: nothing to build the model's variables from: the model has no "
                "input shape and the trainer no input. Give the model a keras.Input, have "
                "build_train_dataset or build_eval_dataset return a dataset, or pass one to evaluate/predict."
            )
        with self._strategy.scope():
            if element_spec is None:
                self._updater.build()
                return
            zeros = tf.nest.map_structure(
                lambda s: tf.zeros([1] + s.shape.as_list()[1:], s.dtype), element_spec
            )
            x, y, _ = keras.utils.unpack_x_y_sample_weight(zeros)
            unbuilt = self._metrics.unbuilt()
            if not self._model.built or unbuilt:
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
        existing = [(v, v.numpy()) for v in self._model.non_trainable_variables]
        y_pred = self._model(x, training=False)
        for variable, value in existing:
            variable.assign(value)
        return y_pred

    def check_train_input(self, element_spec, first_batches: tf.data.Dataset) -> None:
        """Checks the training input against the step and builds the state for it.

        Raises:
          TypeError, ValueError: the batches cannot feed the step; the message names why.
        """
        default_step = self._uses_default_step("train_step")
        input_checks.element_spec(element_spec, default_step=default_step)
        self.build_state(element_spec)
        input_checks.first_batch(self._loss if default_step else None, self.model_outputs, first_batches)

    def checkpoint_state(self) -> dict[str, list]:
        """The variables a checkpoint holds, in named groups (see `framework.checkpointing.variable_groups`)."""
        return variable_groups.collect(
            self._owner,
            counters=[self._counters.step],
            updater=self._updater,
            skip=self._skip,
            given=self._given,
        )

    def run_record(self) -> dict:
        """The config as the trainer runs it (`config.json` in the workdir)."""
        custom = not self._uses_default_step("build_optimizer")
        built_by = f"{type(self._owner).__name__}.build_optimizer" if custom else None
        return recorded_config.record(self._config, self._updater.named_optimizers(), built_by=built_by)
