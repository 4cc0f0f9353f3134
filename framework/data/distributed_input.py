"""Distributed input: a dataset hook, its length in steps, and its iterators.

`DistributedInput` wraps a `build_*_dataset(input_context)` hook with
`strategy.distribute_datasets_from_function`. It knows how many global steps
one pass yields (from the dataset's cardinality), and it hands out one
iterator per epoch, or one for the whole run when the dataset is infinite or
cycled (a step-based run, or epochs of `steps_per_epoch` that are not a pass:
docs/input.md).

An infinite training dataset on a strategy fed from the host is read
through one plain iterator whose position is saved with each checkpoint and
restored on resume (`framework.data.input_positions`). Otherwise a run resumes by
replaying (a `DistributedIterator` is not trackable): on a fresh distributed
dataset the k-th `iter()` yields epoch k's `reshuffle_each_iteration` order,
so `iterator(epoch, skip=n)` creates and drops the iterators of the epochs
before, then draws and discards the `n` batches already trained on.

A pipeline whose batch count does not divide among its replicas has its last
step's rows spread over all of them (`framework.data.batch_layout`): no replica gets
an empty batch where there are rows enough. Under several workers a finite
input's steps per pass are agreed by all workers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from absl import logging

from framework import distribute, periods
from framework.data import input_positions
from framework.data.batch_layout import empty_batches, spread_last_step
from framework.data.input_positions import global_shuffle  # noqa: F401 - part of this module's API
from framework.data.record_stream import shuffled_records  # noqa: F401 - part of this module's API

SLOW_COUNT_SECONDS = 10.0  # counting an input of unknown length: a warning above this

Hook = Callable[[tf.distribute.InputContext], Any]


def as_hook(source: tf.data.Dataset | Hook, what: str) -> Hook:
    """A dataset hook from a `tf.data.Dataset` of global batches or a hook of per-replica batches.

    Raises:
      TypeError: `source` is neither.
    """
    if isinstance(source, tf.data.Dataset):

        def hook(input_context):
            if input_context.num_replicas_in_sync == 1:
                return source
            return distribute.split_global_batches(source, input_context)

        return hook
    if callable(source):
        return source
    raise TypeError(
        f"{what} must be a tf.data.Dataset of global batches or a function input_context -> "
        f"tf.data.Dataset of per-replica batches, got {type(source).__name__}: {source!r:.200}"
    )


def _fixed_batches(hook: Hook, count: int) -> Hook:
    """The first `count` batches, cached on the first (eager) pass and replayed every epoch."""

    def fixed(input_context):
        dataset = hook(input_context)
        if dataset is None:
            return None
        dataset = dataset.take(count).cache()
        for _ in dataset:  # fill the cache now: an unfinished pass would not keep it
            pass
        return dataset

    return fixed


def _pass_steps(pipeline: Pipeline) -> int:
    """Steps one pass of a finite pipeline yields; 0 when its length is unknown."""
    return math.ceil(pipeline.cardinality / pipeline.replicas) if pipeline.cardinality > 0 else 0


def _host_only(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.OneDeviceStrategy) and all(
        "CPU" in device.upper() for device in strategy.extended.worker_devices
    )


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """What building one input pipeline tells about the input."""

    cardinality: int  # batches per pass, or tf.data's INFINITE / UNKNOWN_CARDINALITY
    element_spec: Any  # of a batch, after `spread_last_step`
    replicas: int  # replicas this pipeline feeds
    context: tf.distribute.InputContext  # the context it was built in


def _build_pipeline(
    hook: Hook, name: str, strategy: tf.distribute.Strategy, input_context, *, optional: bool
) -> tuple[tf.data.Dataset, Pipeline | None]:
    """The hook's dataset for `input_context`, ready to distribute, and what it tells; None if absent.

    Raises:
      TypeError: the hook returned something other than a dataset (or None, when `optional`).
    """
    dataset = hook(input_context)
    if dataset is None and optional:
        return tf.data.Dataset.range(0), None
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"{name}() must return a tf.data.Dataset, got {type(dataset).__name__}: {dataset!r:.200}"
        )
    replicas = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    cardinality = int(dataset.cardinality())
    if not isinstance(strategy, tf.distribute.TPUStrategy):  # TPUs need static shapes
        dataset = spread_last_step(dataset, replicas)
    return dataset, Pipeline(cardinality, dataset.element_spec, replicas, input_context)


class DistributedInput:
    """One dataset hook distributed over `strategy`."""

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        hook: Hook,
        name: str,
        *,
        steps_per_epoch: int = 0,
        optional: bool = False,
        limit: int = 0,
        overfit_batches: int = 0,
        cycle: bool = False,
        read_on: bool = False,
        pad_workers: bool = False,
    ):
        """limit: at most this many steps per pass (debug). overfit_batches: the same N batches every epoch.

        cycle: a step-based run's input: a finite dataset is repeated (one
        iterator for the run, as for an infinite one) and `steps_per_epoch`
        may exceed one pass.
        read_on: an epoch-based run's input with `steps_per_epoch` set: a
        finite dataset whose pass is not `steps_per_epoch` steps long is
        cycled, so each epoch reads on where the previous one stopped (as
        Keras' `fit(steps_per_epoch=...)` does); one of exactly that length
        keeps its fresh iterator per epoch, unless another worker's input
        cycles (one collective decides).
        pad_workers: (evaluation) under several workers, a finite input may
        give workers different numbers of steps: every worker runs the most,
        a worker past its own end on batches of no rows. Without it (and on
        TPUs, whose batches keep their shapes), such an input is refused:
        every worker must run the same steps.
        """
        pad_workers = pad_workers and not isinstance(strategy, tf.distribute.TPUStrategy)
        self.strategy, self.name = strategy, name
        self.present = True
        if overfit_batches:
            hook = _fixed_batches(hook, overfit_batches)
        self._hook = hook
        built: list[Pipeline | None] = []  # the strategy calls dataset_fn once per local pipeline
        datasets: list[tf.data.Dataset] = []

        def dataset_fn(input_context):
            nonlocal cycle
            dataset, pipeline = _build_pipeline(hook, name, strategy, input_context, optional=optional)
            built.append(pipeline)
            finite = pipeline is not None and pipeline.cardinality != tf.data.INFINITE_CARDINALITY
            if read_on and finite and not cycle:
                cycle = _pass_steps(pipeline) != steps_per_epoch
            if cycle and finite:
                dataset = dataset.repeat()  # after spread_last_step: each pass ends on a whole step
            elif pad_workers and finite and distribute.num_workers(strategy) > 1:
                padding = empty_batches(dataset.element_spec)
                dataset = dataset if padding is None else dataset.concatenate(padding)
            datasets.append(dataset)
            return dataset

        def build():
            built.clear()
            datasets.clear()
            if _host_only(strategy):
                # One CPU replica: a distributed iterator would add hundreds of
                # microseconds per step (its get_next goes through a multi-device
                # prefetch) for nothing; strategy.run takes plain batches.
                return dataset_fn(
                    tf.distribute.InputContext(
                        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1
                    )
                )
            return strategy.distribute_datasets_from_function(dataset_fn)

        self.dataset = build()
        # A cycled input is fed through other compiled steps (one iterator for the run): when one
        # worker's pass is not an epoch, every worker cycles, so all run the same steps.
        agree = read_on and distribute.num_workers(strategy) > 1
        if agree and distribute.any_worker(strategy, cycle)[0] and not cycle:
            cycle = True
            self.dataset = build()
        pipeline = built[-1]
        if pipeline is None:
            self.present = False
            return
        self.element_spec = pipeline.element_spec
        leaves = [s for s in tf.nest.flatten(self.element_spec) if getattr(s, "shape", None) is not None]
        self.static_batch = bool(leaves) and all(s.shape.rank and s.shape[0] is not None for s in leaves)
        self.cardinality = pipeline.cardinality
        self.infinite = cycle or self.cardinality == tf.data.INFINITE_CARDINALITY
        self.pass_steps = 0  # a cycled dataset's steps per pass, when known
        self._pass_ends: list[int] = []  # every worker's pass_steps
        if cycle:  # a finite dataset's length is not needed (an unknown one may not end)
            if self.cardinality == 0:
                raise ValueError(f"{self.name}() returned an empty dataset.")
            self.pass_steps = _pass_steps(pipeline)
            # every worker cuts its compiled calls at every worker's pass ends (see call_sizes)
            self._pass_ends = distribute.per_worker(
                strategy, pipeline.context.input_pipeline_id, self.pass_steps
            )
            self.steps = steps_per_epoch
            if read_on:
                periods.log_reading_on(name, steps_per_epoch, self.pass_steps)
        elif read_on:  # one pass of a finite input, as on every other worker (see `read_on`)
            self.steps = steps_per_epoch
        else:
            self.steps = self._agreed_steps(pipeline, hook, steps_per_epoch, limit, pad_workers)
        if limit:
            self.steps = min(self.steps, limit)
        self._iterators_made = 0
        self._persistent = None
        self._skip_fn = None
        self.worker = pipeline.context.input_pipeline_id
        self.states: input_positions.InputStates | None = None  # set by whoever keeps checkpoints
        self._resume_step: int | None = None
        self._host_dataset = None  # the checkpointable per-worker dataset of an infinite input
        if self.infinite and not isinstance(strategy, tf.distribute.TPUStrategy) and len(datasets) == 1:
            reason = input_positions.unsavable_reason(datasets[0])
            if reason:
                logging.info(
                    "%s(): the input position cannot be saved (%s); a resumed run replays every batch "
                    "since its start.",
                    name,
                    reason,
                )
            else:
                self._host_dataset = input_positions.stack_replicas(datasets[0], pipeline.replicas)

    def _agreed_steps(self, pipeline: Pipeline, hook: Hook, requested: int, limit: int, pad: bool) -> int:
        """Steps per pass, the same on every worker; see `pad_workers`.

        Every worker reaches this point: a worker's error is raised on all of them after the count.
        """
        if distribute.num_workers(self.strategy) == 1:
            return self._count_steps(pipeline, hook, requested, allow_empty=False)
        error = None
        try:
            steps = self._count_steps(pipeline, hook, requested, allow_empty=pad)
            steps = min(steps, limit) if limit else steps
        except ValueError as e:
            steps, error = -1, e
        counts = distribute.per_worker(self.strategy, pipeline.context.input_pipeline_id, steps)
        if error is not None:
            raise error
        failed = [w for w, c in enumerate(counts) if c < 0]
        if failed:
            raise ValueError(f"{self.name}() failed on worker(s) {failed}; their logs say why.")
        if max(counts) == 0:
            raise ValueError(f"{self.name}() returned an empty dataset on every worker.")
        if len(set(counts)) == 1:
            return counts[0]
        by_worker = ", ".join(f"worker {w}: {c}" for w, c in enumerate(counts))
        if pad and empty_batches(pipeline.element_spec) is not None:
            logging.info(
                "%s() gives the workers uneven steps (%s); all run %d.", self.name, by_worker, max(counts)
            )
            return max(counts)
        raise ValueError(
            f"{self.name}() gives the workers different numbers of steps per pass ({by_worker}), but "
            "every worker must run the same steps. Give every worker as many batches (shard the files "
            "evenly), set config.steps_per_epoch (each worker then reads on through its own input, "
            "starting its next pass where it runs out), or train by steps (config.train_steps)."
        )

    def _count_steps(self, pipeline: Pipeline, hook: Hook, requested: int, *, allow_empty: bool) -> int:
        cardinality = self.cardinality
        if cardinality == tf.data.UNKNOWN_CARDINALITY:
            start = time.process_time()
            dataset = hook(pipeline.context)
            cardinality = int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
            seconds = time.process_time() - start
            # Usual for TFRecord files, and cheap for an evaluation set: a warning only when it costs.
            (logging.warning if seconds > SLOW_COUNT_SECONDS else logging.info)(
                "%s() returned a dataset of unknown length: counted its %d batches in %.1f CPU-s. "
                "dataset.apply(tf.data.experimental.assert_cardinality(batches)) skips the count%s.",
                self.name,
                cardinality,
                seconds,
                ", as does config.steps_per_epoch" if self.name == "build_train_dataset" else "",
            )
        if cardinality == tf.data.INFINITE_CARDINALITY:
            if not requested:
                raise ValueError(f"{self.name}() returned an infinite dataset: set config.steps_per_epoch.")
            return requested
        available = math.ceil(cardinality / pipeline.replicas)
        if available == 0 and not allow_empty:
            raise ValueError(f"{self.name}() returned an empty dataset.")
        if requested > available:
            raise ValueError(
                f"config.steps_per_epoch={requested} but {self.name}() yields only {available} steps "
                "per pass; use a smaller value or .repeat() the dataset."
            )
        return requested or available

    def iterator(self, epoch: int = 0, *, skip: int = 0):
        """The iterator for `epoch` (0-based), positioned `skip` batches in.

        Finite datasets get a fresh iterator per epoch; an infinite one is
        shared by all epochs, so `skip` then counts from the run's start.
        """
        if self.infinite:
            if self._persistent is None:
                self._persistent = self._resumed(epoch * self.steps + skip)
            return self._persistent
        if epoch < self._iterators_made:
            raise ValueError(f"{self.name}: iterator for epoch {epoch} was already handed out.")
        while self._iterators_made < epoch:
            iter(self.dataset)  # replay the reshuffle of an epoch already trained
            self._iterators_made += 1
        self._iterators_made += 1
        iterator = iter(self.dataset)
        self._skip(iterator, skip)
        return iterator

    def resume_at(self, step: int) -> None:
        """The run resumes from checkpoint `step`: its saved input position is restored, if any."""
        self._resume_step = step

    def save_position(self, step: int) -> None:
        """Saves this worker's position as that of checkpoint `step` (an infinite input's only)."""
        if self.states is not None and self._host_dataset is not None and self._persistent is not None:
            self.states.write(self._persistent, step)

    def drop_stale_positions(self) -> None:
        """Removes saved positions whose checkpoints are gone (call when no save is in flight)."""
        if self.states is not None:
            self.states.prune()

    def _resumed(self, position: int):
        """The infinite input's iterator, `position` batches in: restored when saved, else replayed."""
        if self._host_dataset is None:
            iterator = iter(self.dataset)
            self._skip(iterator, position)
            return iterator
        iterator = iter(self._host_dataset)
        if position and self.states is not None and self._resume_step is not None:
            start = time.perf_counter()
            if self.states.read(iterator, self._resume_step):
                logging.info(
                    "%s(): restored the input position of step %d in %.2f s.",
                    self.name,
                    self._resume_step,
                    time.perf_counter() - start,
                )
                return iterator
            iterator = iter(self._host_dataset)  # a failed restore may have moved it
        self._skip(iterator, position)
        return iterator

    def _skip(self, iterator, count: int) -> None:
        if count <= 0:
            return
        start = time.perf_counter()
        if self._skip_fn is None:

            @tf.function
            def skip(iterator, count):
                for _ in tf.range(count):
                    next(iterator)

            self._skip_fn = skip
        self._skip_fn(iterator, tf.constant(count, tf.int64))
        logging.info(
            "%s(): resumed by replaying %d batches in %.2f s.", self.name, count, time.perf_counter() - start
        )

    def call_sizes(self, done: int, wanted: int, *, step: int = 0) -> int:
        """Steps for the next compiled call: at most `wanted`, and a pass's last step alone.

        Without a static batch size the last step may be a partial batch. A
        collective (Triplet's all-gather) whose input shape changes between
        iterations of one loop fails in TensorFlow, so that step never shares
        a call with full ones; it costs one more call per epoch. A cycled
        dataset's passes end anywhere in a period: `step`, the steps drawn
        since the run's start, says where; under several workers, at any
        worker's pass end.
        """
        left = self.steps - done
        n = min(wanted, left)
        if not self.static_batch and not self.infinite and 1 < left <= n:
            n = left - 1
        elif not self.static_batch:  # every worker's pass ends, so that all make the same calls
            for steps in filter(None, self._pass_ends):
                before_last = steps - 1 - step % steps  # steps before the pass's last
                n = min(n, before_last) if before_last else 1
        return n

    def host_dataset(self) -> tf.data.Dataset:
        """The hook's dataset built anew for one replica (checks on a first batch)."""
        return self._hook(tf.distribute.InputContext())

    def fresh_iterator(self):
        """An iterator outside the epoch sequence (evaluation)."""
        return iter(self.dataset)
