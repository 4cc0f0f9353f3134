"""Keras callbacks in the framework's loop, and the framework's own periodic hooks.

Keras 3 callbacks work unchanged: `fit(callbacks=[...])` or `build_callbacks()`.
They are called on train begin/end, epoch begin/end, and around every compiled
call of `steps_per_execution` steps (as Keras does with its own
`steps_per_execution`: batch hooks see the group's last step index and its
mean logs). The logs they get use Keras' names: `val/loss` becomes
`val_loss`, so `EarlyStopping(monitor="val_loss")` works as with `fit`.
`model.stop_training = True` (EarlyStopping, TerminateOnNaN) ends training
after the current call; `model.optimizer` is the trainer's optimizer, so
`ReduceLROnPlateau` changes the learning rate the compiled step reads.

A `Periodic` hook is a plain callable `fn(trainer, step, logs)` run every
`every_steps` steps and/or `every_secs` seconds, between compiled calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import keras


def keras_logs(logs: dict[str, float]) -> dict[str, float]:
    return {("val_" + k[4:] if k.startswith("val/") else k): v for k, v in logs.items()}


class Periodic:
    """`fn(trainer, step, logs)` every `every_steps` steps and/or every `every_secs` seconds.

    The hook runs between compiled calls, when the step count is a multiple of
    `every_steps` or when `every_secs` have passed since it last ran (or since
    it was created); the step schedule makes the loop stop exactly on those
    steps, the time schedule runs at the first call boundary after the time.

    Args:
      fn: called as `fn(trainer, step, logs)` with the step just completed and
        the mean logs of the last compiled call.
      every_steps: run on every step that is a multiple of this (>= 1).
      every_secs: run when this many seconds have passed since the last run.
      clock: seconds as a float, monotonic; `time.monotonic` unless a test
        supplies its own.

    Raises:
      ValueError: neither schedule is given, `every_steps` < 1 or
        `every_secs` < 0.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        every_steps: int | None = None,
        every_secs: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not every_steps and not every_secs:
            raise ValueError("Periodic: give every_steps and/or every_secs.")
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"Periodic: every_steps must be >= 1, got {every_steps}.")
        if every_secs is not None and every_secs < 0:
            raise ValueError(f"Periodic: every_secs must be >= 0, got {every_secs}.")
        self.fn, self.every_steps, self.every_secs = fn, every_steps, every_secs
        self._clock = clock
        self._last_time = clock()

    def steps_to_next(self, step: int) -> int | None:
        """Steps from `step` to the next multiple of `every_steps`; None without a step schedule."""
        return self.every_steps - step % self.every_steps if self.every_steps else None

    def maybe_run(self, trainer, step: int, logs: dict[str, float]) -> bool:
        """Runs `fn` if a schedule is due at `step`.

        Args:
          trainer: passed on to `fn`.
          step: the number of steps completed.
          logs: passed on to `fn`.

        Returns:
          Whether `fn` ran.
        """
        due = bool(self.every_steps) and step % self.every_steps == 0
        now = self._clock()
        if self.every_secs and now - self._last_time >= self.every_secs:
            due = True
        if due:
            self._last_time = now
            self.fn(trainer, step, logs)
        return due


class Hooks:
    """The callbacks and periodic hooks of one `fit()`."""

    def __init__(self, trainer, callbacks: Iterable, *, epochs: int, steps: int):
        callbacks = list(callbacks)
        self.periodic = [c for c in callbacks if isinstance(c, Periodic)]
        others = [c for c in callbacks if not isinstance(c, Periodic)]
        for c in others:
            if not isinstance(c, keras.callbacks.Callback):
                raise TypeError(
                    f"callbacks: expected keras.callbacks.Callback or framework.Periodic objects, got "
                    f"{type(c).__name__}."
                )
        self.trainer = trainer
        self.active = bool(others)
        if self.active and getattr(trainer.model, "optimizer", None) is None:
            trainer.model.optimizer = trainer.optimizer  # for LR callbacks
        self.keras = keras.callbacks.CallbackList(
            others,
            add_history=False,
            add_progbar=False,
            model=trainer.model,
            epochs=epochs,
            steps=steps,
            verbose=0,
        )
        trainer.model.stop_training = False

    @property
    def wants_batches(self) -> bool:
        """Whether anything listens after each compiled call (else its logs need not be computed)."""
        return self.active or bool(self.periodic)

    def steps_to_next(self, step: int) -> int | None:
        bounds = [b for b in (p.steps_to_next(step) for p in self.periodic) if b]
        return min(bounds) if bounds else None

    @property
    def stop(self) -> bool:
        return bool(getattr(self.trainer.model, "stop_training", False))

    def train_begin(self) -> None:
        if self.active:
            self.keras.on_train_begin()

    def train_end(self, logs: dict[str, float] | None) -> None:
        if self.active:
            self.keras.on_train_end(keras_logs(logs or {}))

    def epoch_begin(self, epoch: int) -> None:
        if self.active:
            self.keras.on_epoch_begin(epoch)

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.active:
            self.keras.on_epoch_end(epoch, keras_logs(logs))

    def batch_begin(self, index: int) -> None:
        if self.active:
            self.keras.on_train_batch_begin(index)

    def batch_end(self, index: int, step: int, logs: dict[str, float]) -> None:
        if self.active:
            self.keras.on_train_batch_end(index, keras_logs(logs))
        for hook in self.periodic:
            hook.maybe_run(self.trainer, step, logs)
