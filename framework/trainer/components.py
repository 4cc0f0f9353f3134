"""The components a `framework.Trainer` owns, and where they are made and wired.

`make` is called by `Trainer.__init__` once the build hooks have run: each
component is given what it needs, explicitly. Who owns what:

    StepCounters    the step, the non-finite step and count (variables)   counters
    PhaseMetrics    the train and eval metrics, the phase being traced    phase_metrics
    CompiledSteps   train / eval / predict functions, the forward pass    compiled_steps
    StepHelpers     compute_loss / apply_gradients / update_metrics       step_helpers
    TrainerState    building variables, input checks, checkpoint groups  variables
    HostReads       what the host loop reads and sets between calls      host_reads
    PhaseRunner     fit / evaluate / predict / restore / export           phases

(modules of `framework.trainer`).

The optimizers' `Updater` (`framework.optim.updates`) is made before the build
hooks run, since `add_optimizer` registers with it.
"""

from __future__ import annotations

from typing import NamedTuple

from framework.optim import updates
from framework.trainer.compiled_steps import CompiledSteps, StepFunctions
from framework.trainer.counters import StepCounters
from framework.trainer.host_reads import HostReads
from framework.trainer.phase_metrics import PhaseMetrics
from framework.trainer.phases import PhaseRunner
from framework.trainer.step_helpers import StepHelpers
from framework.trainer.variables import TrainerState


class TrainerComponents(NamedTuple):
    """The components a trainer's methods forward to."""

    phases: PhaseRunner
    state: TrainerState
    host: HostReads
    compiled: CompiledSteps
    helpers: StepHelpers


def make(
    trainer, counters: StepCounters, updater: updates.Updater, *, skip: frozenset[str], given: frozenset[str]
) -> TrainerComponents:
    """Makes a trainer's components from its built parts (model, optimizer, loss, metrics, steps).

    Args:
      trainer: the trainer, its build hooks run: its public attributes and methods are read.
      counters: its counters (made under the strategy's scope).
      updater: the updater of its optimizers.
      skip: attributes the trainer holds for the framework, not walked for variables to checkpoint.
      given: attributes set before its build hooks ran.

    Returns:
      The components.
    """
    strategy, config, model, loss = trainer.strategy, trainer.config, trainer.model, trainer.loss
    phase_metrics = PhaseMetrics(trainer.metrics, trainer.eval_metrics)
    shared = {"counters": counters, "updater": updater, "phase_metrics": phase_metrics}
    default_step = trainer.uses_default_step
    compiled = CompiledSteps(
        strategy,
        config,
        model,
        trainer.optimizer,
        StepFunctions(trainer.train_step, trainer.eval_step, trainer.predict_step),
        **shared,
        uses_default_step=default_step,
        after_train_call=trainer.after_train_call,
    )
    state = TrainerState(
        trainer,
        strategy=strategy,
        config=config,
        model=model,
        loss=loss,
        **shared,
        uses_default_step=default_step,
        skip=skip,
        given=given,
    )
    return TrainerComponents(
        phases=PhaseRunner(trainer),
        state=state,
        host=HostReads(strategy, config, counters, updater, phase_metrics),
        compiled=compiled,
        helpers=StepHelpers(model, loss, **shared, compiled=compiled, uses_default_step=default_step),
    )
