"""Controller: the host side of a run, around a Trainer's compiled steps.

    fit():
        inputs, compiled train function, restore the latest checkpoint
        for epoch in remaining epochs:
            iterator = train input's iterator for the epoch (replayed when resuming)
            while the epoch has steps left:
                n = steps to the next log point / checkpoint (<= steps_per_execution)
                sums, last = train_fn(iterator, n)
                stop on a non-finite step; at log points: logs, TensorBoard, progress
                on SIGTERM: save and exit 0; every_steps: save
            evaluate; epoch record; save at epoch boundaries and at the end

The Trainer defines what a step is (`build_*`, `train_step`, `eval_step`);
the Controller decides when steps run, what is logged, and what is saved.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import TYPE_CHECKING

import tensorflow as tf
from absl import logging

from framework import checkpoint, logs, loop, state
from framework.data import DistributedInput

if TYPE_CHECKING:
    from framework.trainer import Trainer


class Controller:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.config = trainer.config
        self.train_input: DistributedInput | None = None
        self.eval_input: DistributedInput | None = None
        self.train_fn = self.eval_fn = None
        self.checkpoints: checkpoint.Checkpoints | None = None
        self.run_log: logs.RunLog | None = None
        self.resume: dict | None = None
        self.auto_steps = 32

    # ---- inputs and compiled functions ----------------------------------------

    def has_eval(self) -> bool:
        t = self.trainer
        if self.eval_input is None:
            self.eval_input = DistributedInput(
                t.strategy, t.build_eval_dataset, "build_eval_dataset", optional=True
            )
        return self.eval_input.present

    def _xla_plan(self, step: str) -> str | None:
        from framework.trainer import Trainer  # the base class, for "was the step overridden?"

        t = self.trainer
        custom = getattr(type(t), step) is not getattr(Trainer, step)
        plan = loop.xla_plan(t.strategy, self.config.jit_compile, custom_step=custom, where=step)
        if plan == "forward" and t._forward is t.model:
            t._forward = loop.compile_forward(t.model)
        return plan

    def _prepare_train(self) -> None:
        if self.train_fn is not None:
            return
        t = self.trainer
        self.train_input = DistributedInput(
            t.strategy,
            t.build_train_dataset,
            "build_train_dataset",
            steps_per_epoch=self.config.steps_per_epoch,
        )
        t._build_state(self.train_input.element_spec)
        xla = self._xla_plan("train_step")
        self.train_fn = loop.make_step_function(
            t.strategy, t._updater.counting_examples(t.train_step), where="train_step",
            on_step=lambda: t._step.assign_add(1),
            should_stop=lambda: t._nonfinite_step >= 0, jit_compile=xla == "step",
        )  # fmt: skip
        self.run_log = logs.RunLog(t.workdir, enabled=t.is_chief)
        if self.open_checkpoints(writer=True) is not None:
            self.restore("latest")
        if t.is_chief and t.workdir:
            tf.io.gfile.makedirs(t.workdir)
            with tf.io.gfile.GFile(os.path.join(t.workdir, "config.json"), "w") as f:
                json.dump(self.config.to_dict(), f, indent=2, sort_keys=True, default=str)

    def steps_per_call(self) -> int:
        return self.config.steps_per_execution or self.auto_steps

    def _tune_steps(self, n: int, seconds: float) -> None:
        """Auto steps_per_execution: aim for ~0.2 s per compiled call."""
        if self.train_fn.experimental_get_tracing_count() and seconds > 0:
            self.auto_steps = int(min(1000, max(1, 0.2 / (seconds / n))))

    # ---- checkpoints -----------------------------------------------------------

    def open_checkpoints(self, *, writer: bool) -> checkpoint.Checkpoints | None:
        t = self.trainer
        if self.checkpoints is None and t.workdir:
            self.checkpoints = checkpoint.Checkpoints(
                os.path.join(t.workdir, "checkpoints"), self.config.checkpoint, writer=writer and t.is_chief
            )
        return self.checkpoints

    def restore(self, which: str | int = "latest") -> int | None:
        t = self.trainer
        if self.train_input is None and not self.has_eval():
            raise ValueError("restore() before fit() needs build_eval_dataset() to return a dataset.")
        t._build_state((self.train_input or self.eval_input).element_spec)
        ckpts = self.open_checkpoints(writer=self.train_input is not None)
        if ckpts is None:
            raise ValueError("restore() needs a workdir.")
        groups = state.collect(t)
        if which == "latest":
            meta = ckpts.restore_latest(groups)
        else:
            step = ckpts.best_step() if which == "best" else int(which)
            if step is None or step not in ckpts.steps():
                raise ValueError(
                    f"No checkpoint {which!r} in {ckpts.directory}; it holds steps {ckpts.steps()}."
                )
            meta = ckpts.restore(groups, step)
        if meta is None:
            return None
        t.epoch = meta["epoch"]
        self.resume = meta
        return meta["step"]

    def save(
        self, *, step_in_epoch: int = 0, sums: logs.Sums | None = None, metrics=None, final=False
    ) -> None:
        if self.checkpoints is None:
            return
        t = self.trainer
        meta = {
            "step": t.step, "epoch": t.epoch, "step_in_epoch": step_in_epoch, "final": final,
            "epoch_sums": dict(sums.sums) if sums else {}, "trainer": type(t).__name__,
        }  # fmt: skip
        if self.checkpoints.save(t.step, state.collect(t), meta, metrics):
            where = f", {step_in_epoch} steps in" if step_in_epoch else ""
            logging.info("Checkpoint at step %d (epoch %d%s).", t.step, t.epoch, where)

    # ---- phases -------------------------------------------------------------------

    def fit(self, *, validate: bool = True) -> list[dict[str, float]]:
        t = self.trainer
        self.resume = None
        self._prepare_train()
        t.resumed_at_step = t.step
        if self.resume:
            logging.info("Resumed from the checkpoint at step %d (epoch %d).", t.step, t.epoch)
        t._nonfinite_step.assign(-1)
        has_eval = validate and self.has_eval()
        progress = logs.Progress(enabled=t.is_chief)
        history = []
        cfg = self.config.checkpoint
        with checkpoint.Preemption() as preemption:
            while t.epoch < self.config.epochs:
                epoch_logs = self._train_epoch(progress, preemption)
                if has_eval and (t.epoch + 1) % self.config.eval_every_epochs == 0:
                    val = {f"val/{k}": v for k, v in self.evaluate().items()}
                    self.run_log.write("eval", t.step, t.epoch + 1, val)
                    epoch_logs.update(val)
                t.epoch += 1
                self.run_log.write("epoch", t.step, t.epoch, epoch_logs)
                progress.end_epoch(epoch_logs)
                history.append(epoch_logs)
                final = t.epoch == self.config.epochs
                due = cfg.every_epochs and t.epoch % cfg.every_epochs == 0
                if final or due or (cfg.every_steps and t.step % cfg.every_steps == 0):
                    self.save(metrics=epoch_logs, final=final)
        if self.checkpoints is not None:
            self.checkpoints.close()  # waits for pending writes; reopened on demand
            self.checkpoints = None
        return history

    def _train_epoch(self, progress: logs.Progress, preemption: checkpoint.Preemption) -> dict[str, float]:
        t = self.trainer
        resume, self.resume = self.resume or {}, None
        done = resume.get("step_in_epoch", 0)
        if not done:
            t.reset_metrics()
        iterator = self.train_input.iterator(t.epoch, skip=done)
        total = self.train_input.steps
        progress.start_epoch(t.epoch + 1, self.config.epochs, total)
        epoch, interval = logs.Sums(resume.get("epoch_sums"), done), logs.Sums()
        interval_start = time.perf_counter()
        every, save_every = self.config.log_every_steps, self.config.checkpoint.every_steps
        while done < total:
            step = t.step
            n = min(self.steps_per_call(), total - done, every - step % every)
            if save_every:
                n = min(n, save_every - step % save_every)
            call_start = time.perf_counter()
            sums, last = self.train_fn(iterator, tf.constant(n, tf.int64))
            self._check_finite(last)
            if not self.config.steps_per_execution:
                self._tune_steps(n, time.perf_counter() - call_start)
            epoch.add(sums, n)
            interval.add(sums, n)
            done += n
            point = None
            if (step + n) % every == 0 or done == total:
                rate = interval.steps / max(time.perf_counter() - interval_start, 1e-9)
                point = {**interval.means(), **t.metric_results(), **t._updater.logs()}
                self.run_log.write("train", t.step, t.epoch + 1, {**point, "steps_per_sec": rate})
                progress.update(done, point, rate=rate)
                interval, interval_start = logs.Sums(), time.perf_counter()
            else:
                progress.update(done)
            if preemption.requested:
                self.save(step_in_epoch=done, sums=epoch)
                if self.checkpoints is not None:
                    self.checkpoints.wait()
                logging.warning("Preempted: saved step %d; rerun the same command to resume.", t.step)
                raise SystemExit(0)
            if save_every and t.step % save_every == 0 and done < total:
                self.save(step_in_epoch=done, sums=epoch, metrics=point)
        return {**epoch.means(), **t.metric_results(), **t._updater.logs()}

    def _check_finite(self, last: dict) -> None:
        bad = int(self.trainer._nonfinite_step.numpy())
        if bad < 0:
            return
        terms = [f"{k}={float(v)}" for k, v in last.items() if not math.isfinite(float(v))]
        what = (
            f"loss at step {bad}: {', '.join(terms)}"
            if terms
            else f"gradients at step {bad} (the loss was finite)"
        )
        raise FloatingPointError(
            f"Non-finite {what}. The update was skipped; the weights hold the values before that step."
        )

    def evaluate(self) -> dict[str, float]:
        t = self.trainer
        if not self.has_eval():
            raise ValueError("evaluate() needs build_eval_dataset() to return a dataset.")
        if self.eval_fn is None:
            t._build_state(self.eval_input.element_spec)
            xla = self._xla_plan("eval_step")
            self.eval_fn = loop.make_step_function(
                t.strategy, t.eval_step, where="eval_step", jit_compile=xla == "step"
            )
        t.reset_metrics()
        iterator = self.eval_input.fresh_iterator()
        total, done, sums = self.eval_input.steps, 0, logs.Sums()
        while done < total:
            n = min(self.steps_per_call(), total - done)
            call_sums, _ = self.eval_fn(iterator, tf.constant(n, tf.int64))
            sums.add(call_sums, n)
            done += n
        return {**sums.means(), **t.metric_results()}
