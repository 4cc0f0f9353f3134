"""Run outputs: metrics.jsonl, TensorBoard scalars, and the progress display.

Only the chief writes files (`enabled=False` elsewhere). Everything here runs
on the host at log points, never inside the compiled loop.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from framework import log_values
from framework.outputs import console, metrics_file


def to_floats(logs: Mapping) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items()}


class Sums:
    """Host-side running sums of weighted log values (`framework.log_values`) over some steps.

    parts: key -> ``[2, k]`` array: per part, the sum of ``value * weight``
      and the sum of weights. `means()` is exact over examples.
    steps: steps run; counted: steps summed (fewer when nan_policy="skip"
      left some out; None: all of them).
    """

    def __init__(self, parts: Mapping | None = None, steps: int = 0, *, counted: int | None = None):
        self.parts = {k: np.asarray(v, np.float64) for k, v in (parts or {}).items()}
        self.steps = steps
        self.counted = steps if counted is None else counted

    def add(self, other: Sums) -> None:
        for key, value in other.parts.items():
            mine = self.parts.get(key)
            self.parts[key] = value if mine is None or mine.shape != value.shape else mine + value
        self.steps += other.steps
        self.counted += other.counted

    def means(self) -> dict[str, float]:
        """Each key's exact mean; empty when no step was summed."""
        if not self.counted:
            return {}
        return {k: log_values.mean_of(v) for k, v in self.parts.items()}

    def to_json(self) -> dict[str, list]:
        return {k: v.tolist() for k, v in self.parts.items()}

    @classmethod
    def from_json(cls, saved: Mapping | None, steps: int) -> Sums:
        """Sums saved by `to_json` after `steps` steps; plain floats are sums of unweighted step means."""
        parts = {
            k: [[v], [float(steps)]] if isinstance(v, (int, float)) else v for k, v in (saved or {}).items()
        }
        return cls(parts, steps)


class Interval:
    """Log sums since the last log point, and when it was (for steps_per_sec)."""

    def __init__(self):
        self.sums = Sums()
        self.start = time.perf_counter()

    def steps_per_sec(self) -> float:
        return self.sums.steps / max(time.perf_counter() - self.start, 1e-9)


def _json_value(value: float):
    return value if math.isfinite(value) else str(value)


class RunLog:
    """Appends log records to `workdir/metrics.jsonl` and TensorBoard event files.

    Train scalars go under `workdir/train`, evaluation scalars (keys starting
    with `val/`, written without that prefix so curves overlay) under
    `workdir/eval`. metrics.jsonl gets each record at once; the train log
    points' TensorBoard scalars are written together, in one compiled call, at
    the epoch's record (when the event files are flushed), every
    `SCALAR_BATCH` points, and at `flush()`.
    """

    SCALAR_BATCH = 64

    def __init__(self, workdir: str | None, *, enabled: bool = True):
        self.enabled = enabled and workdir is not None
        self.workdir = workdir
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._scalar_fns: dict[tuple, object] = {}
        self._pending: dict[tuple, list] = {}  # (split, names) -> [(step, values)] not yet written
        if self.enabled:
            tf.io.gfile.makedirs(workdir)  # gfile: the workdir may be a gs:// bucket
            self._jsonl = tf.io.gfile.GFile(metrics_file.path_of(workdir), "a")

    def _writer(self, split: str) -> tf.summary.SummaryWriter:
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(os.path.join(self.workdir, split))
        return self._writers[split]

    def write(self, kind: str, step: int, epoch: int, logs: Mapping[str, float]) -> None:
        """kind: 'train' (a log point), 'eval', or 'epoch' (end-of-epoch summary)."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "epoch": epoch, "time": round(time.time(), 3)}
        record.update({k: _json_value(v) for k, v in logs.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if kind == "epoch":
            self.flush()  # the epoch's scalars are on disk at its end
            return  # its values were written at their own log points
        train = {k: v for k, v in logs.items() if not metrics_file.is_val(k)}
        evals = {metrics_file.without_val(k): v for k, v in logs.items() if metrics_file.is_val(k)}
        for split, values in (("train", train), ("eval", evals)):
            if values:
                pending = self._pending.setdefault((split, tuple(values)), [])
                pending.append((step, list(values.values())))
                if kind != "train" or len(pending) >= self.SCALAR_BATCH:
                    self._write_scalars()

    def flush(self) -> None:
        """Writes the pending TensorBoard scalars and flushes the event files."""
        if not self.enabled:
            return
        self._write_scalars()
        for writer in self._writers.values():
            writer.flush()

    def _write_scalars(self) -> None:
        for key, rows in self._pending.items():
            if rows:
                self._scalars(*key)(
                    tf.constant([r[0] for r in rows], tf.int64), tf.constant([r[1] for r in rows], tf.float32)
                )
        self._pending.clear()

    def _scalars(self, split: str, names: tuple):
        """One compiled call writes every scalar of some log points (eager ops per scalar cost ~0.2 ms each)."""
        key = (split, names)
        if key not in self._scalar_fns:
            writer = self._writer(split)

            def write(steps, values):
                def point(row):
                    with tf.name_scope("/"):  # the tags as they are, not under the loop's scope
                        for i, name in enumerate(names):
                            tf.summary.scalar(name, values[row, i], step=steps[row])
                    return (row + 1,)

                with writer.as_default():
                    tf.while_loop(lambda row: row < tf.shape(steps)[0], point, (tf.constant(0),))

            # Traced here, called as a concrete function: a new RunLog's writer is
            # then not taken for a retrace of another one's by TensorFlow.
            self._scalar_fns[key] = tf.function(write, autograph=False).get_concrete_function(
                tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, len(names)], tf.float32)
            )
        return self._scalar_fns[key]

    def close(self) -> None:
        if self.enabled:
            self._write_scalars()
            self._jsonl.close()
            for writer in self._writers.values():
                writer.close()


def _format(logs: Mapping[str, float], limit: int = 6) -> str:
    keys = [k for k in logs if "/raw" not in k][:limit]
    return " ".join(f"{k}={logs[k]:.4g}" for k in keys)


def _format_period(logs: Mapping[str, float], train_limit: int = 10) -> str:
    """A period's end: its first `train_limit` train values, then every validation value."""
    train = {k: v for k, v in logs.items() if not metrics_file.is_val(k)}
    val = {k: v for k, v in logs.items() if metrics_file.is_val(k)}
    return " ".join(filter(None, (_format(train, train_limit), _format(val, len(val)))))


class Progress:
    """A progress bar with steps/s and ETA on a terminal; absl log lines elsewhere."""

    def __init__(self, *, enabled: bool = True, interactive: bool | None = None):
        self.enabled = enabled
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._bar = None
        self.first_step = self.total_steps = 0
        if enabled:
            console.show_info()  # a Trainer driven from plain Python, before any app.run

    def start_epoch(
        self, epoch: int, epochs: int, steps: int, *, first_step: int = 0, total_steps: int = 0
    ) -> None:
        """A new epoch (1-based) of `steps` steps; a step-based run's period gives `total_steps`.

        A step-based run's lines count the run's steps (`step 1200/5000`) from
        `first_step`, the step its period started at.
        """
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.first_step, self.total_steps = first_step, total_steps
        self._start = time.perf_counter()
        if self.enabled and self.interactive:
            if total_steps:
                print(f"Steps {first_step + 1}-{first_step + steps} of {total_steps}")
            else:
                print(f"Epoch {epoch}/{epochs}")
            self._bar = keras.utils.Progbar(steps, stateful_metrics=None, unit_name="step")

    def update(self, done: int, logs: Mapping[str, float] | None = None, *, rate: float | None = None):
        """done: steps finished in this epoch. `logs` given at log points only."""
        if not self.enabled:
            return
        if self._bar is not None:
            values = [("steps/s", rate)] if rate else []
            values += [(k, v) for k, v in (logs or {}).items() if "/" not in k][:4]
            self._bar.update(done, values=values or None)
        elif logs is not None and self.total_steps:
            step = self.first_step + done
            eta = (self.total_steps - step) / rate if rate else float("nan")
            logging.info(
                "step %d/%d | %s | %.1f steps/s, ETA %.0fs",
                step,
                self.total_steps,
                _format(logs),
                rate or 0.0,
                eta,
            )
        elif logs is not None:
            eta = (self.steps - done) / rate if rate else float("nan")
            logging.info(
                "epoch %d/%d step %d/%d | %s | %.1f steps/s, ETA %.0fs",
                self.epoch,
                self.epochs,
                done,
                self.steps,
                _format(logs),
                rate or 0.0,
                eta,
            )

    def end_epoch(self, logs: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        seconds = time.perf_counter() - self._start
        if self._bar is not None:
            self._bar = None
        if self.total_steps:
            step = self.first_step + self.steps
            logging.info(
                "step %d/%d: period done in %.1fs | %s", step, self.total_steps, seconds, _format_period(logs)
            )
        else:
            logging.info(
                "epoch %d/%d done in %.1fs | %s", self.epoch, self.epochs, seconds, _format_period(logs)
            )
