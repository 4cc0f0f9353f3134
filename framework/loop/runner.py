"""Runner: everything the host loop (`framework.loop.controller.Controller`) may ask of a trainer.

The Controller decides when steps run, what is logged and what is saved; a
runner says what a step is. `framework.Trainer` is the runner researchers
subclass; a test may drive the Controller with a small stub instead, so the
loop's cadence (log points, checkpoints, preemption, hooks) is tested on its
own. The Controller uses nothing of a runner but what is listed here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import keras
import ml_collections
import tensorflow as tf

from framework.outputs import run_log


class StepFunction(Protocol):
    """A compiled function of up to `num_steps` steps; see `framework.loop.step_function.StepFunction`."""

    def __call__(self, iterator: Any, num_steps: tf.Tensor) -> tuple[run_log.Sums, Mapping[str, float], Any]:
        """Runs the steps; returns their log sums, the values a non-finite step shows in (see loop),
        and what a train call read after its last step: {"metrics": `metric_results()` (absent when
        a metric cannot be read in a graph), "optimizer": `optimizer_logs()`, "nonfinite_step":
        `nonfinite_step()`}, or None (the host then asks the runner)."""

    def experimental_get_tracing_count(self) -> int:
        """How many times it was traced (0 before its first call)."""


@runtime_checkable
class Runner(Protocol):
    """What the Controller reads, calls and sets on the trainer it runs.

    Attributes:
      config: the resolved run config (`framework.config.defaults()` keys).
      workdir: checkpoints, logs and the run record go here; None: nowhere.
      strategy: the distribution strategy every step runs under.
      is_chief: whether this worker writes checkpoints and logs.
      model: the Keras model; the Controller reads and sets `stop_training`.
      optimizer: the primary optimizer (Keras callbacks see it as `model.optimizer`).
      epoch: epochs completed; the Controller advances it.
      resumed_at_step: the step the last `fit()` started from; the Controller sets it.
    """

    config: ml_collections.ConfigDict
    workdir: str | None
    strategy: tf.distribute.Strategy
    is_chief: bool
    model: keras.Model
    optimizer: Any
    epoch: int
    resumed_at_step: int

    @property
    def step(self) -> int:
        """Training steps completed (the global step)."""

    # ---- inputs --------------------------------------------------------------

    def build_train_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset: ...

    def build_eval_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset | None: ...

    def build_callbacks(self) -> list: ...

    def check_train_input(self, element_spec: Any, first_batches: tf.data.Dataset) -> None:
        """Checks the training input against the step before anything is traced.

        Raises:
          TypeError, ValueError: the batches cannot feed the step; the message names why.
        """

    # ---- state and compiled functions ----------------------------------------

    def build_state(self, element_spec: Any) -> None:
        """Creates every variable (model, optimizer, metrics) for inputs of `element_spec`."""

    def checkpoint_state(self) -> dict[str, list]:
        """The variables a checkpoint holds, in named groups (`framework.checkpointing.variable_groups`)."""

    def run_record(self) -> dict:
        """The config as the run uses it, for `config.json` in the workdir."""

    def set_step(self, step: int) -> None:
        """Sets the global step (after a restore that goes on past an offending batch)."""

    def make_train_function(self) -> StepFunction:
        """The compiled train function: up to `num_steps` steps, stopping after a non-finite one
        unless `config.nan_policy` is "skip"."""

    def make_eval_function(self) -> StepFunction:
        """The compiled eval function (build state for the eval input first)."""

    def make_predict_function(self) -> Callable[[Any], Any]:
        """The compiled predict function: `fn(iterator) -> one batch of outputs`."""

    def fit_schedules(self, total_updates: int) -> None:
        """Fits learning-rate schedules whose length is the run's (`decay_steps = 0`) to `total_updates`."""

    # ---- non-finite steps ------------------------------------------------------

    def nonfinite_step(self) -> int:
        """The step (1-based) whose loss or gradients were non-finite since the last clear; -1: none."""

    def clear_nonfinite(self) -> None:
        """Forgets the non-finite step, so training goes on."""

    def loss_term_of(self, key: str) -> str | None:
        """The term a loss log holds when its loss has one term (its logs then name no term); else None."""

    # ---- logs and metrics ---------------------------------------------------------

    def optimizer_logs(self) -> dict[str, float]:
        """Learning rates, loss scale and other optimizer values to log, read on the host."""

    def reset_metrics(self, phase: str = "train") -> None: ...

    def metric_results(self, phase: str = "train") -> dict[str, float]: ...

    def eval_phase(self) -> contextlib.AbstractContextManager:
        """A context in which eval steps trace and run: eval metrics, EMA weights."""
