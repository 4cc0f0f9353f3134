"""Controller: the host side of a run, around a runner's compiled steps.

    fit():
        inputs; checks on the first batch; compiled train function; restore the latest checkpoint
        for epoch in remaining periods (epochs, or eval intervals of a step-based run; framework.periods):
            iterator = train input's iterator for the epoch (replayed when resuming)
            while the epoch has steps left:
                n = steps to the next boundary: log point, checkpoint, hook, profiler, epoch end
                sums, last, after = train_fn(iterator, n)    # <= steps_per_execution steps; after: metrics, lr
                non-finite step: raise | skip | restore (config.nan_policy: framework.loop.nonfinite)
                at log points: logs, TensorBoard, progress; callbacks and hooks
                on SIGTERM: save and exit 0; every_steps: save
            evaluate (framework.loop.evaluation); epoch record; save at epoch boundaries and at the end

The runner (`framework.loop.runner.Runner`: a `Trainer`) defines what a step is
(`build_*`, `train_step`, `eval_step`); the Controller decides when steps
run, what is logged, and what is saved, and asks the runner for nothing
beyond that interface. `Trainer.evaluate` and `predict` run through the
Controller's `Evaluator` (`framework.loop.evaluation`), the one fit evaluates with.

Several workers (MultiWorkerMirroredStrategy, TPU slices with several hosts)
run this loop in lockstep, and every collective must be issued by every
worker in the same order. Reading a metric or any other sync-on-read variable
on the host is such a collective. So every worker reads metrics, snapshots
the state for a checkpoint (`save`) and takes host-side decisions that change
what runs next (stop, preempt, restore) at the same points, from values all
workers computed together (`distribute.mean_over_workers`); only then does the chief
alone write them (checkpoints, metrics.jsonl, TensorBoard, progress). Nothing
that issues a collective may sit behind `is_chief`.
"""

from __future__ import annotations

import os
import time

import tensorflow as tf
from absl import logging

from framework import distribute, periods
from framework.checkpointing import checkpoint
from framework.config import ConfigError
from framework.data import DistributedInput, input_positions
from framework.loop import callbacks
from framework.loop.evaluation import Evaluator
from framework.loop.nonfinite import NonFinitePolicy
from framework.loop.profiling import StepProfiler
from framework.loop.run_checkpoints import RunCheckpoints
from framework.loop.runner import Runner, StepFunction
from framework.loop.steps_per_call import StepsPerCall
from framework.outputs import metrics_file, recorded_config, run_log


class Controller:
    """Runs a runner's fit (with evaluation and checkpoints) and restore; `evaluator`: evaluate, predict.

    Args:
      trainer: the runner whose steps run (a `framework.Trainer`).
    """

    def __init__(self, trainer: Runner):
        self.trainer = trainer
        self.config = trainer.config
        self.debug = trainer.config.debug
        self.train_input: DistributedInput | None = None
        self.train_fn: StepFunction | None = None
        self.saving = RunCheckpoints(trainer)
        self.periods: periods.Periods | None = None
        self.period_steps = 0  # steps of the period being trained
        self.period_sums = run_log.Sums()  # its log sums so far
        self._after: dict | None = None  # what the last train call read after its steps, if still current
        self.run_log = run_log.RunLog(None)
        self.resume: dict | None = None
        self.state_chosen = False  # fit or restore has set the state evaluate / predict start from
        self.steps_per_call = StepsPerCall(self.config)
        self.evaluator = Evaluator(trainer, self.steps_per_call)
        self.nonfinite = NonFinitePolicy(trainer, lambda: self.open_checkpoints(writer=True))
        self.profiler = StepProfiler(self.config.profile_steps, trainer.workdir, enabled=trainer.is_chief)

    # ---- inputs and compiled functions ----------------------------------------

    def _prepare_train(self) -> None:
        """Once per Controller: input, checks, compiled function, checkpoints, schedules, run records."""
        if self.train_fn is not None:
            return
        t = self.trainer
        self.train_input = DistributedInput(
            t.strategy,
            t.build_train_dataset,
            "build_train_dataset",
            steps_per_epoch=periods.period_steps(self.config) or self.config.steps_per_epoch,
            limit=self.debug.fast_dev_run or self.debug.limit_train_steps,
            overfit_batches=self.debug.overfit_batches,
            cycle=bool(self.config.train_steps),
            read_on=periods.reads_on(self.config),
        )
        t.check_train_input(self.train_input.element_spec, self.train_input.host_dataset())
        self.train_fn = t.make_train_function()
        self.state_chosen = True
        if t.workdir:
            directory = os.path.join(t.workdir, "checkpoints", "input")
            self.train_input.states = input_positions.InputStates(directory, self.train_input.worker)
        self._resume_from_checkpoints()
        self._plan_periods()
        self.run_log = run_log.RunLog(t.workdir, enabled=t.is_chief)
        if t.is_chief:
            recorded_config.start_run(t.workdir, self.config, t.step, t.run_record)

    def _plan_periods(self) -> None:
        """The run's periods and schedule lengths, from the config as it is now (it may change between fits)."""
        self.periods = periods.plan(self.config, self.train_input.steps)
        self.trainer.fit_schedules(self.periods.updates)

    def _resume_from_checkpoints(self) -> None:
        """Restores the workdir's latest checkpoint; under nan_policy="restore", makes sure one exists."""
        if not self.debug.fast_dev_run and self.open_checkpoints(writer=True) is not None:
            self._restore_or_set_aside()
            # every worker has read before the chief writes
            distribute.any_worker(self.trainer.strategy, False)
            if self.config.nan_policy == "restore" and self.resume is None:
                self.save()  # something to go back to
        elif self.config.nan_policy == "restore":
            raise ConfigError(
                "config.nan_policy='restore' needs checkpoints: a --workdir and no fast_dev_run."
            )

    # ---- checkpoints -----------------------------------------------------------

    @property
    def checkpoints(self) -> checkpoint.Checkpoints | None:
        return self.saving.checkpoints

    def open_checkpoints(self, *, writer: bool) -> checkpoint.Checkpoints | None:
        return self.saving.open(writer=writer)

    def _restore_or_set_aside(self) -> None:
        try:
            self.restore("latest")
        except checkpoint.CheckpointMismatch:
            if not self.config.checkpoint.allow_mismatch:
                raise
            self.saving.set_aside()

    def restore(self, which: str | int = "latest", dataset=None) -> int | None:
        """Loads checkpoint `which`; before fit(), builds the state from `dataset` or the trainer's inputs."""
        t = self.trainer
        if not t.workdir:
            raise ValueError("restore() needs a workdir.")
        if self.train_input is not None:
            t.build_state(self.train_input.element_spec)
        else:
            t.build_state(self.evaluator.state_spec(dataset))
        meta = self.saving.load(which, writer=self.train_input is not None)
        self.state_chosen = True
        if meta is None:
            return None
        t.epoch = meta["epoch"]
        self.resume = meta
        if self.train_input is not None:
            self.train_input.resume_at(meta["step"])
        return meta["step"]

    def save(self, **position) -> None:
        """Saves the state and, on every worker, its input position (`position`: `RunCheckpoints.save`'s)."""
        if self.checkpoints is None:
            return
        if self.train_input is not None:  # every worker saves its own input position
            self.train_input.save_position(self.trainer.step)
        self.saving.save(self.periods, **position)

    # ---- fit ----------------------------------------------------------------------

    def fit(self, *, validate: bool = True, callbacks_: list | None = None) -> list[dict[str, float]]:
        try:
            return self._fit(validate, callbacks_)
        except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError) as e:
            if distribute.num_workers(self.trainer.strategy) > 1:
                logging.error(distribute.lost_workers_message(e))
            raise
        finally:
            self.run_log.flush()  # the TensorBoard scalars of log points after the last epoch end
            if self.saving.close() and self.train_input is not None:
                self.train_input.drop_stale_positions()

    def _fit(self, validate: bool, callbacks_: list | None) -> list[dict[str, float]]:
        """The module docstring's loop: periods of compiled calls, each ended by evaluation and a save."""
        t, cfg = self.trainer, self.config
        self._start_fit()
        has_eval = validate and self.evaluator.has_eval()
        plan = self.periods
        if self.resume and self.resume.get("stopped_early"):
            logging.info(
                "The run in %s was stopped early by a callback at epoch %d; nothing to train.",
                t.workdir,
                t.epoch,
            )
            return []
        hooks = callbacks.Hooks(
            t, [*t.build_callbacks(), *(callbacks_ or [])], epochs=plan.count, steps=plan.length
        )
        progress = run_log.Progress(enabled=t.is_chief)
        history, epoch_logs = [], None
        hooks.train_begin()
        with checkpoint.Preemption() as preemption:
            while not plan.finished(t.step, t.epoch) and not hooks.stop:
                if plan.step_based:
                    t.epoch = plan.position(t.step)[0]
                hooks.epoch_begin(t.epoch)
                epoch_logs = self._train_epoch(progress, preemption, hooks)
                if has_eval and (plan.step_based or (t.epoch + 1) % cfg.eval_every_epochs == 0):
                    epoch_logs.update(self._evaluate_period())
                t.epoch += 1
                self.run_log.write("epoch", t.step, t.epoch, epoch_logs)
                progress.end_epoch(epoch_logs)
                history.append(epoch_logs)
                hooks.epoch_end(t.epoch - 1, epoch_logs)
                self._agree(preemption, hooks)
                self._save_at_period_end(preemption, hooks, epoch_logs)
        hooks.train_end(epoch_logs)
        return history

    def _start_fit(self) -> None:
        """Prepares training (once), plans the periods from the config as it is now, logs where it resumes."""
        t = self.trainer
        self.resume = None
        if self.train_fn is not None:
            self._plan_periods()
        self._prepare_train()
        if not self.debug.fast_dev_run:
            self.open_checkpoints(writer=True)  # a later fit() of this trainer: the last one closed them
        self.saving.start_fit()
        t.resumed_at_step = t.step
        if self.resume and self.periods.step_based:
            logging.info("Resumed from the checkpoint at step %d of %d.", t.step, self.periods.total)
        elif self.resume:
            logging.info("Resumed from the checkpoint at step %d (epoch %d).", t.step, t.epoch)
        t.clear_nonfinite()

    def _evaluate_period(self) -> dict[str, float]:
        """Evaluates at a period's end (logged as val/...); a step-based run keeps the train metrics' state.

        Evaluation updates the train metrics too unless the runner has eval-only
        ones; a longer rerun may continue a step-based run's last period from its
        final checkpoint, whose metric state must then be the period's.
        """
        t = self.trainer
        if not self.periods.step_based:
            results = self.evaluator.evaluate()
        else:
            with periods.values_kept(t.checkpoint_state().get("metrics", []), t.strategy):
                results = self.evaluator.evaluate()
        val = metrics_file.as_val(results)
        self.run_log.write("eval", t.step, t.epoch + 1, val)
        return val

    def _save_at_period_end(
        self, preemption: checkpoint.Preemption, hooks: callbacks.Hooks, logs_: dict
    ) -> None:
        """At a period's end: saves when due, and on SIGTERM saves (if not due) and exits.

        Due: every checkpoint.every_epochs or every_steps, every period of a step-based run (each no
        sooner than checkpoint.min_interval_secs after the previous save), and at the end.
        """
        t, plan, ckpt = self.trainer, self.periods, self.config.checkpoint
        final = plan.finished(t.step, t.epoch) or hooks.stop
        due = plan.step_based or (ckpt.every_epochs and t.epoch % ckpt.every_epochs == 0)
        due = self.saving.save_allowed and (due or (ckpt.every_steps and t.step % ckpt.every_steps == 0))
        if final or due:
            # A step-based run keeps the period's sums: a longer rerun may continue it.
            period = {"step_in_epoch": self.period_sums.steps, "sums": self.period_sums}
            self.save(
                metrics=logs_, final=final, stopped_early=hooks.stop, **(period if plan.step_based else {})
            )
        elif preemption.agreed:
            self.save()
        if preemption.agreed and not final:
            self._exit_preempted(t.step)

    def _bounds(self, step: int, hooks: callbacks.Hooks) -> list[int]:
        """Steps until each boundary a compiled call must not cross."""
        every, save_every = self.config.log_every_steps, self.config.checkpoint.every_steps
        bounds = [self.steps_per_call(), every - step % every]
        if save_every:
            bounds.append(save_every - step % save_every)
        if hooks.steps_to_next(step):
            bounds.append(hooks.steps_to_next(step))
        return bounds + self.profiler.bounds(step)

    def _train_epoch(self, progress, preemption, hooks) -> dict[str, float]:
        """One epoch of compiled calls; between them, what the module docstring's loop lists."""
        t = self.trainer
        done, epoch, iterator = self._start_epoch(progress)
        total, step, interval = self.period_steps, t.step, run_log.Interval()
        while done < total and not hooks.stop:
            n = self.train_input.call_sizes(done, min(*self._bounds(step, hooks), total - done), step=step)
            self.profiler.before_call(step)
            hooks.batch_begin(done)
            sums, ran, counted, seconds = self._call(iterator, step, n)
            if counted:
                epoch.add(sums)
                interval.sums.add(sums)
            done, step = done + ran, step + ran
            self.profiler.after_call(step)
            point = self._log_point(step, done, interval, progress)
            self._batch_end(hooks, done, step, point, sums)
            self._agree(preemption, hooks, steps=n, seconds=seconds)
            self._save_in_epoch(preemption, step, done, epoch, point)
        return {**epoch.means(), **self._host_values()}

    def _start_epoch(self, progress: run_log.Progress) -> tuple[int, run_log.Sums, object]:
        """(steps already trained in this epoch, their log sums, the epoch's iterator past them)."""
        t, plan = self.trainer, self.periods
        resume, self.resume = self.resume or {}, None
        done, sums = resume.get("step_in_epoch", 0), resume.get("epoch_sums")
        if plan.step_based:
            saved, done = done, plan.position(t.step)[1]
            sums = sums if saved == done else None  # saved sums of another period's length
        if not done:
            t.reset_metrics()
        self._after = None
        iterator = self.train_input.iterator(t.epoch, skip=done)
        self.period_steps = plan.steps_in(t.epoch)
        if plan.step_based:
            progress.start_epoch(
                t.epoch + 1, plan.count, self.period_steps, first_step=t.step - done, total_steps=plan.total
            )
        else:
            progress.start_epoch(t.epoch + 1, plan.count, self.period_steps)
        self.period_sums = run_log.Sums.from_json(sums, done)
        return done, self.period_sums, iterator

    def _call(self, iterator, step: int, n: int) -> tuple[run_log.Sums, int, bool, float]:
        """One compiled call of `n` steps, then config.nan_policy.

        Returns its log sums, the steps it ran, whether its sums count, and its duration.
        """
        start = time.perf_counter()
        sums, last, after = self.train_fn(iterator, tf.constant(n, tf.int64))
        bad = None if after is None else int(after["nonfinite_step"])
        ran, counted = self.nonfinite.after_call(step, n, last, bad)
        self._after = after if counted else None  # a restore loaded other values
        return sums, ran, counted, time.perf_counter() - start

    def _host_values(self) -> dict[str, float]:
        """Metric results and optimizer logs now: as the last train call read them, or read here."""
        after, t = self._after, self.trainer
        metric_values = after["metrics"] if after and "metrics" in after else t.metric_results()
        return {**metric_values, **(after["optimizer"] if after else t.optimizer_logs())}

    def _log_point(
        self, step: int, done: int, interval: run_log.Interval, progress: run_log.Progress
    ) -> dict | None:
        """At log points (every log_every_steps, and the epoch's end): the logs, written and shown."""
        if step % self.config.log_every_steps and done < self.period_steps:
            progress.update(done)
            return None
        t, rate = self.trainer, interval.steps_per_sec()
        point = {**interval.sums.means(), **self._host_values()}
        self.run_log.write("train", step, t.epoch + 1, {**point, "steps_per_sec": rate})
        progress.update(done, point, rate=rate)
        interval.sums, interval.start = run_log.Sums(), time.perf_counter()
        return point

    def _batch_end(self, hooks: callbacks.Hooks, done: int, step: int, point: dict | None, sums) -> None:
        """Keras batch hooks and Periodic hooks, with the log point's logs or the call's means."""
        skipped = self.nonfinite.take_skipped()
        if hooks.wants_batches:
            batch_logs = dict(point or sums.means())
            if skipped:  # TerminateOnNaN sees what the skipped step produced
                batch_logs["loss"] = float("nan")
            hooks.batch_end(done - 1, step, batch_logs)

    def _save_in_epoch(
        self, preemption, step: int, done: int, epoch: run_log.Sums, point: dict | None
    ) -> None:
        """On preemption: save and exit; every checkpoint.every_steps: save."""
        if preemption.agreed:
            self.save(step_in_epoch=done, sums=epoch)
            self._exit_preempted(step)
        save_every = self.config.checkpoint.every_steps
        if save_every and step % save_every == 0 and done < self.period_steps and self.saving.save_allowed:
            self.save(step_in_epoch=done, sums=epoch, metrics=point)

    def _agree(
        self,
        preemption: checkpoint.Preemption,
        hooks: callbacks.Hooks,
        *,
        steps: int = 0,
        seconds: float = 0.0,
    ) -> None:
        """Host decisions every worker takes alike, from one all-reduce between compiled calls.

        All stop, or are preempted, when any one is; auto steps_per_execution
        is tuned on the mean call time, so every worker cuts the epoch into the
        same calls; a due save waits for checkpoint.min_interval_secs on the
        workers' mean time since the last save.
        """
        preempted, stop, mean_seconds, since_save = distribute.mean_over_workers(
            self.trainer.strategy,
            [float(preemption.requested), float(hooks.stop), seconds, self.saving.seconds_since_save()],
        )
        self.saving.agree(since_save)
        preemption.agreed = preempted > 0
        if stop > 0:
            self.trainer.model.stop_training = True
        if steps:
            self.steps_per_call.tune(
                steps, mean_seconds, bool(self.train_fn.experimental_get_tracing_count())
            )

    def _exit_preempted(self, step: int) -> None:
        if self.checkpoints is not None:
            self.checkpoints.wait()
        logging.warning("Preempted: saved step %d; rerun the same command to resume.", step)
        raise SystemExit(0)
