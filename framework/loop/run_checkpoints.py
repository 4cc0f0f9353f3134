"""A run's checkpoints as the Controller uses them: opening, loading one, saving the run's position, when to save.

`RunCheckpoints` owns the workdir's `checkpointing.checkpoint.Checkpoints`
(opened read-only for a restore before training, for writing by the chief once
training starts), what a save records besides the variables (the step, the
epoch, the position and log sums inside it), and `checkpoint.min_interval_secs`:
a due save waits until that long after the previous one, judged on the
workers' mean time so that every worker decides alike.
"""

from __future__ import annotations

import os
import time

from absl import logging

from framework import periods
from framework.checkpointing import checkpoint
from framework.loop.runner import Runner
from framework.outputs import run_log


class RunCheckpoints:
    """The checkpoints of one runner's workdir.

    Args:
      runner: the runner whose state is saved (a `framework.Trainer`).
    """

    def __init__(self, runner: Runner):
        self.runner = runner
        self.checkpoints: checkpoint.Checkpoints | None = None
        self.last_save = time.monotonic()
        self.save_allowed = False  # agreed by every worker at the Controller's last agreement

    @property
    def options(self):
        """`config.checkpoint` as it is now (a later fit() may run with another config)."""
        return self.runner.config.checkpoint

    def open(self, *, writer: bool) -> checkpoint.Checkpoints | None:
        """The workdir's checkpoints (None without a workdir); `writer`: the chief may write them."""
        r = self.runner
        if self.checkpoints is not None and writer and r.is_chief and not self.checkpoints.writer:
            self.checkpoints.close()  # opened read-only by a restore before fit()
            self.checkpoints = None
        if self.checkpoints is None and r.workdir:
            self.checkpoints = checkpoint.Checkpoints(
                os.path.join(r.workdir, "checkpoints"), self.options, writer=writer and r.is_chief
            )
        return self.checkpoints

    def close(self) -> bool:
        """Waits for pending writes and closes; they reopen on demand. Returns whether any were open."""
        if self.checkpoints is None:
            return False
        self.checkpoints.close()
        self.checkpoints = None
        return True

    def set_aside(self) -> None:
        """config.checkpoint.allow_mismatch: moves another run's checkpoints away and starts afresh."""
        moved = self.checkpoints.set_all_aside()
        logging.warning("checkpoint.allow_mismatch: another run's checkpoints moved to %s.", moved)
        self.checkpoints = None
        self.open(writer=True)

    def load(self, which: str | int, *, writer: bool) -> dict | None:
        """Restores checkpoint `which` ("latest", "best" or a step) into the runner's state.

        Returns:
          The checkpoint's metadata (step, epoch, position in the epoch), or None when
          "latest" finds no checkpoint.

        Raises:
          checkpoint.CheckpointNotFound: no checkpoint `which`.
        """
        ckpts = self.open(writer=writer)
        groups, name = self.runner.checkpoint_state(), type(self.runner).__name__
        if which == "latest":
            return ckpts.restore_latest(groups, trainer=name)
        step = ckpts.best_step() if which == "best" else int(which)
        if step is None and which == "best":
            raise checkpoint.CheckpointNotFound(ckpts.why_no_best())
        if step is None or step not in ckpts.steps():
            raise checkpoint.CheckpointNotFound(
                f"No checkpoint {which!r} in {ckpts.directory}; it holds steps {ckpts.steps()}."
            )
        return ckpts.restore(groups, step, trainer=name)

    def save(
        self,
        plan: periods.Periods | None,
        *,
        step_in_epoch: int = 0,
        sums: run_log.Sums | None = None,
        metrics=None,
        final=False,
        stopped_early=False,
    ) -> None:
        """Saves the runner's state at its step, with where in the run it is (`plan`: the run's periods)."""
        r = self.runner
        meta = {
            "step": r.step,
            "epoch": r.epoch,
            "step_in_epoch": step_in_epoch,
            "final": final,
            "stopped_early": stopped_early,
            "epoch_sums": sums.to_json() if sums else {},
            "trainer": type(r).__name__,
        }
        self.last_save = time.monotonic()
        if self.checkpoints.save(r.step, r.checkpoint_state(), meta, metrics):
            if plan is not None and plan.step_based:
                logging.info("Checkpoint at step %d/%d.", r.step, plan.total)
            else:
                where = f", {step_in_epoch} steps in" if step_in_epoch else ""
                logging.info("Checkpoint at step %d (epoch %d%s).", r.step, r.epoch, where)

    def start_fit(self) -> None:
        """A fit() starts: no due save before min_interval_secs from now."""
        self.last_save, self.save_allowed = time.monotonic(), False

    def seconds_since_save(self) -> float:
        return time.monotonic() - self.last_save

    def agree(self, mean_seconds_since_save: float) -> None:
        """Due saves are allowed from the workers' mean time since the last save (or always, when
        ranking a best_metric: every due save is a candidate)."""
        self.save_allowed = (
            bool(self.options.best_metric) or mean_seconds_since_save >= self.options.min_interval_secs
        )
