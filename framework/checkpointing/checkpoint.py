"""Checkpoints with orbax-checkpoint: save, resume exactly, survive preemption.

Under `workdir/checkpoints/<step>/` each checkpoint holds two items:
`state`, every variable of the run as numpy (see `framework.checkpointing.variable_groups`), and
`meta`, JSON with the step, the epoch, how far into the epoch the input had
got, the host-side loss sums of the unfinished epoch, and the variables'
names and shapes.

* Saving is asynchronous (orbax writes in the background while training
  continues); `wait()` blocks until the writes are on disk. A save that is
  interrupted leaves only a temporary directory, which orbax ignores and
  cleans up on the next start.
* Only the chief writes. Every process reads the chief's directory: without
  `jax.distributed` each TF worker would believe it is orbax's process 0.
  Every process must nonetheless call `save` at the same points: reading the
  state is a collective under multi-worker strategies (a metric's or an
  accumulator's sync-on-read variable is summed over all replicas when read),
  so every worker reads it jointly and then only the writer writes.
* Restoring tries the newest checkpoint first; one that fails to read is
  renamed `<step>.unreadable-<time>` (kept, never deleted) with a warning,
  and the next older one is tried.
* Kept: the newest `max_to_keep`, plus the `keep_best` best by
  `best_metric` (a logged key such as `val/accuracy`) in `best_mode`.
* `Preemption` turns SIGTERM into a flag the training loop polls between
  compiled calls: the loop saves at the current step, waits, and exits 0.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import ml_collections
from absl import logging

from framework.checkpointing import variable_groups
from framework.outputs import metrics_file


def _orbax():
    """`orbax.checkpoint`, imported by the first `Checkpoints`: a run without checkpoints never loads it (nor JAX)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # orbax imports JAX: keep it off accelerators
    import orbax.checkpoint
    import orbax.checkpoint.checkpoint_managers  # noqa: F401 - the preservation policies

    return orbax.checkpoint


def logged_keys(workdir: str) -> list[str]:
    """The keys a run logged in its metrics.jsonl: the evaluation values if any, else the training ones."""
    records = metrics_file.read_records(workdir)
    numbers = {k for r in records for k, v in r.items() if isinstance(v, (int, float))}
    evaluated = sorted(k for k in numbers if k.startswith("val/") and not k.endswith("/raw"))
    return evaluated or sorted(numbers - {"step", "epoch", "time", "steps_per_sec"})


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit this run's variables."""


class CheckpointNotFound(ValueError):
    """The checkpoint asked for (latest, best or a step) is not in the workdir."""


def no_best_message(workdir: str, best_metric: str, steps: list[int]) -> str:
    """Why there is no best checkpoint to restore, naming the keys the run logged and what to set.

    Args:
      workdir: the run's workdir (its `checkpoints/` and `metrics.jsonl`).
      best_metric: the config's `checkpoint.best_metric` ("" when unset).
      steps: the steps of the checkpoints the workdir holds.

    Returns:
      One line for a `FATAL` error or an exception.
    """
    keys = logged_keys(workdir)
    example = next((k for k in keys if "accuracy" in k), keys[0] if keys else "val/accuracy")
    logged = f"the run logged {', '.join(keys)}" if keys else "the run logged no metrics"
    pick = f"or pick a step with --checkpoint=<step> (saved: {', '.join(map(str, steps))})"
    if not steps:
        return f"No checkpoint in {os.path.join(workdir, 'checkpoints')}."
    if not best_metric:
        return (
            f"--checkpoint=best: the run in {workdir} did not set config.checkpoint.best_metric, so its "
            f"checkpoints are not ranked; {logged}. Train with --config.checkpoint.best_metric={example} "
            f"(and --config.checkpoint.best_mode=max or min), {pick}."
        )
    return (
        f"--checkpoint=best: no checkpoint in {workdir} records config.checkpoint.best_metric="
        f"{best_metric!r}; {logged}. A checkpoint records it when the run logs that key at the save: "
        f"train with --config.checkpoint.best_metric={example}, {pick}."
    )


class Checkpoints:
    """The checkpoints of one workdir."""

    def __init__(self, directory: str, cfg: ml_collections.ConfigDict, *, writer: bool):
        self.directory = os.path.abspath(directory)
        self.writer = writer
        self.best_metric, self.best_mode = cfg.best_metric, cfg.best_mode
        self._warned_unranked = False
        ocp = _orbax()
        policies = ocp.checkpoint_managers
        keep = [policies.LatestN(n=cfg.max_to_keep)]
        best_fn = None
        if cfg.best_metric:
            best_fn = lambda metrics: metrics[cfg.best_metric]  # noqa: E731 - makes orbax record metrics
            keep.append(
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[cfg.best_metric],
                    reverse=cfg.best_mode == "min",
                    n=cfg.keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=writer,
            read_only=not writer,
            save_interval_steps=1 if writer else 0,  # orbax warns about any other value when read-only
            create=writer,
            preservation_policy=policies.AnyPreservationPolicy(keep),
            best_fn=best_fn,
            best_mode=cfg.best_mode,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    # ---- reading ----------------------------------------------------------

    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def metrics(self, step: int) -> dict | None:
        return self._manager.metrics(step)

    def best_step(self) -> int | None:
        scored = [
            (m[self.best_metric], s) for s in self.steps() if (m := self.metrics(s)) and self.best_metric in m
        ]
        if not scored:
            return None
        return (max(scored) if self.best_mode == "max" else min(scored))[1]

    def why_no_best(self) -> str:
        """Why `best_step()` found nothing (`no_best_message`)."""
        return no_best_message(os.path.dirname(self.directory), self.best_metric, self.steps())

    def read_meta(self, step: int) -> dict:
        ocp = _orbax()
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, groups: dict[str, list], step: int, *, trainer: str | None = None) -> dict:
        """Loads checkpoint `step` into `groups`; returns its meta.

        trainer: this run's Trainer class name; a checkpoint another one wrote is refused.
        """
        meta = self.read_meta(step)
        if trainer and meta.get("trainer", trainer) != trainer:
            raise CheckpointMismatch(
                f"Checkpoint {self.directory}/{step} was written by {meta['trainer']}, not {trainer}: "
                "the workdir holds another experiment's run. Use another --workdir, or set "
                "--config.checkpoint.allow_mismatch=True to set those checkpoints aside and start fresh."
            )
        problems = variable_groups.mismatches(groups, meta["layout"])
        if problems:
            raise CheckpointMismatch(
                f"Checkpoint {self.directory}/{step} does not match this run's variables:\n  "
                + "\n  ".join(problems[:20])
                + "\nUse another --workdir or the configuration that wrote it, or set "
                "--config.checkpoint.allow_mismatch=True to set them aside and start fresh."
            )
        target, _ = variable_groups.snapshot(groups)
        ocp = _orbax()
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        ).state
        variable_groups.assign(groups, restored)
        return meta

    def restore_latest(self, groups: dict[str, list], *, trainer: str | None = None) -> dict | None:
        """Restores the newest readable checkpoint; None when there is none."""
        for step in reversed(self.steps()):
            try:
                return self.restore(groups, step, trainer=trainer)
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - orbax, tensorstore and JSON all raise their own
                self._set_aside(step, e)
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        path = os.path.join(self.directory, str(step))
        if self.writer:
            moved = f"{path}.unreadable-{int(time.time())}"
            os.rename(path, moved)
            logging.warning(
                "Checkpoint %s is unreadable (%s: %.200s); kept as %s, trying the previous one.",
                path,
                type(error).__name__,
                error,
                moved,
            )
        else:
            logging.warning("Checkpoint %s is unreadable (%s); trying the previous one.", path, error)
        self._manager.reload()

    def set_all_aside(self) -> str:
        """Renames the whole checkpoint directory (kept, not deleted); returns the new path."""
        self._manager.close()
        moved = f"{self.directory}.set-aside-{int(time.time())}"
        if self.writer:  # on a shared filesystem the chief's rename is everyone's
            os.rename(self.directory, moved)
        return moved

    # ---- writing -----------------------------------------------------------

    def save(
        self, step: int, groups: dict[str, list], meta: dict[str, Any], metrics: dict | None = None
    ) -> bool:
        """Starts writing checkpoint `step` (asynchronously); False if not the writer or already saved.

        Every process calls it: the snapshot of `groups` is taken jointly (see the module docstring).
        """
        arrays, layout = variable_groups.snapshot(groups)
        if not self.writer or step in self._manager.all_steps():
            return False
        if metrics is not None and self.best_metric not in metrics:
            evaluated = any(k.startswith("val/") for k in metrics) or not self.best_metric.startswith("val/")
            if self.best_metric and evaluated and not self._warned_unranked:
                self._warned_unranked = True
                logging.warning(
                    "config.checkpoint.best_metric=%r is not among the values logged at step %d (%s); "
                    "checkpoints saved without it are not ranked.",
                    self.best_metric,
                    step,
                    ", ".join(sorted(metrics)),
                )
            metrics = None
        ocp = _orbax()
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave({**meta, "layout": layout})
            ),
            metrics=metrics,
            force=True,
        )
        return True

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


class Preemption:
    """Context manager: SIGTERM sets `requested` instead of killing the process.

    `requested` is this process's signal and is never cleared; `agreed` is what
    the training loop decided from every worker's `requested` and acts on. The
    two are kept apart because the handler runs whenever the main thread next
    executes Python, which may be between reading the workers' flags and
    storing the decision: a signal that arrives then is sent at the next agreement.
    """

    def __init__(self):
        self.requested = False
        self.agreed = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        logging.warning("SIGTERM received: finishing the current step group, then saving and exiting.")
        self.requested = True

    def __enter__(self) -> Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
