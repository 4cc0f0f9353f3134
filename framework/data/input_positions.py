"""The position of an endless training input, saved with each checkpoint.

An infinite (`.repeat()`ed) training dataset is one iterator for the whole
run. Replaying it on resume costs every batch since the run's start, so on
strategies that feed from the host (one device, mirrored replicas, several
workers; not TPUs) the input is read through a plain `tf.data` iterator,
whose state tf.data serializes: each worker saves its own iterator next to
the checkpoint (`checkpoints/input/<step>/worker-<k>`) and restores it on
resume, in time independent of the step.

* With several local replicas the host iterator yields each step's
  per-replica batches stacked (`stack_replicas`), and the compiled step cuts
  them apart on the devices (`replica_values`): replica r of a worker gets
  the r-th, as `distribute_datasets_from_function` would deal them.
* A pipeline whose state tf.data cannot serialize (a Python generator, a
  `py_function`, a stateful random op) or does not restore exactly (a
  `shuffle` that reshuffles each pass, batched before it is repeated) is
  named at start-up (`unsavable_reason`) and resumes by replay.
* What is saved is what the pipeline holds: a `shuffle(N)` saves its N
  buffered elements. `global_shuffle` shuffles random-access data with a
  state of about a kilobyte; `record_stream.shuffled_records` TFRecord files
  with a few.
"""

from __future__ import annotations

import contextlib
import os
import time

import tensorflow as tf
from absl import logging

LARGE_STATE_BYTES = 16 << 20


def unsavable_reason(dataset: tf.data.Dataset) -> str | None:
    """Why tf.data cannot save an iterator over `dataset` exactly; None when it can."""
    try:
        graph = dataset._as_serialized_graph(
            external_state_policy=tf.data.experimental.ExternalStatePolicy.FAIL
        )
    except (tf.errors.OpError, ValueError, TypeError) as e:
        message = getattr(e, "message", str(e)).split("}}")[-1].split(" [Op:")[0].strip()
        return message or type(e).__name__
    if _batched_reshuffle(graph.numpy()):
        return (
            "a shuffle with reshuffle_each_iteration=True is batched before it is repeated, and "
            "tf.data restores the later passes of such a pipeline in another order; repeat() right "
            "after the shuffle, or use framework.data.global_shuffle"
        )
    return None


_BATCHING = ("BatchDataset", "PaddedBatchDataset", "ParallelBatchDataset", "DenseToRaggedBatchDataset")


def _batched_reshuffle(serialized_graph: bytes) -> bool:
    """Whether a reshuffling `shuffle` is batched, then repeated (or sits inside a function).

    Measured in TF 2.21, restoring in a fresh process: `shuffle → repeat → map
    → batch`, `repeat → shuffle → batch` (a shuffle iterated once) and
    `list_files(shuffle=True) → interleave → parse → shuffle → repeat → batch`
    continue in the uninterrupted run's order; `shuffle → batch → repeat`
    (also a finite pipeline that a step-based run cycles) draws other orders
    for the passes after the restore in most runs.
    """
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(serialized_graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name.lstrip("^").split(":")[0], []).append(node)

    def reshuffles(node) -> bool:
        attr = node.attr.get("reshuffle_each_iteration")
        return node.op.startswith("ShuffleDataset") and attr is not None and attr.b

    def batched_then_repeated(node, batched: bool, seen: set) -> bool:
        for consumer in consumers.get(node.name, []):
            if consumer.op.startswith("RepeatDataset"):
                if batched:
                    return True
                continue  # a repeat before any batch: each pass restarts the shuffle whole
            state = (consumer.name, batched or consumer.op.startswith(_BATCHING))
            if state in seen:
                continue
            seen.add(state)
            if batched_then_repeated(consumer, state[1], seen):
                return True
        return False

    in_functions = (n for function in graph.library.function for n in function.node_def)
    if any(reshuffles(node) for node in in_functions):
        return True
    return any(reshuffles(node) and batched_then_repeated(node, False, set()) for node in graph.node)


def global_shuffle(
    dataset: tf.data.Dataset, seed: int, *, reshuffle_each_iteration: bool = True
) -> tf.data.Dataset:
    """`dataset` in a seeded random order over all its elements, with a checkpoint of ~1 KB.

    Unlike `shuffle(buffer_size)`, nothing is buffered: element i of a pass
    is read at a permuted index. The dataset must be finite and random-access
    (`from_tensor_slices`, `range`, `map`, `batch(drop_remainder=True)`, ...;
    not TFRecord files, `filter` or `interleave`). Symbolic checkpointing is
    switched on, so prefetch and parallel-map buffers are not saved either.

    Args:
      dataset: a finite, random-access dataset.
      seed: the order's seed (give the same one on every worker).
      reshuffle_each_iteration: a new order on each pass of a `.repeat()`.

    Returns:
      The shuffled dataset.

    Raises:
      ValueError: `dataset` is infinite or of unknown length.
    """
    from tensorflow.python.data.experimental.ops import global_shuffle_op

    count = int(dataset.cardinality())
    if count < 0:
        raise ValueError(
            f"global_shuffle(dataset) needs a finite dataset of known length, got cardinality {count}; "
            "apply it before .repeat(), to a random-access source (from_tensor_slices, range, map)."
        )
    shuffled = global_shuffle_op._global_shuffle(
        dataset, seed=seed, reshuffle_each_iteration=reshuffle_each_iteration
    )
    options = tf.data.Options()
    options.experimental_symbolic_checkpoint = True
    return shuffled.with_options(options)


def stack_replicas(dataset: tf.data.Dataset, local_replicas: int) -> tf.data.Dataset:
    """Each step's `local_replicas` consecutive per-replica batches stacked on a new first axis."""
    if local_replicas == 1:
        return dataset
    return dataset.ragged_batch(local_replicas, drop_remainder=True)


@tf.autograph.experimental.do_not_convert  # Python control flow only
def replica_values(strategy: tf.distribute.Strategy, iterator, element):
    """What `strategy.run` takes for `element = next(iterator)` (inside a tf.function).

    A plain tf.data iterator under several replicas yields `stack_replicas`
    elements: each local replica takes its own row. Global replica ids are
    worker-major, so a worker's r-th replica is id % local replicas.
    """
    if not isinstance(iterator, tf.data.Iterator) or strategy.num_replicas_in_sync == 1:
        return element
    local = len(strategy.extended.worker_devices)
    if local == 1:  # each worker's one replica takes the element as it is
        return element

    def own(context):
        index = context.replica_id_in_sync_group % local
        return tf.nest.map_structure(lambda t: t[index], element)

    return strategy.experimental_distribute_values_from_function(own)


class InputStates:
    """One worker's saved input positions under `directory/<step>/worker-<k>`."""

    def __init__(self, directory: str, worker: int):
        self.directory, self.worker = directory, worker
        self._reported = False
        self.unsavable = False  # an op of the pipeline cannot save its state: positions are not saved

    def prefix(self, step: int) -> str:
        return os.path.join(self.directory, str(step), f"worker-{self.worker}")

    def write(self, iterator, step: int) -> None:
        """Saves `iterator`'s position as that of checkpoint `step`; drops positions orbax dropped.

        An op that cannot save its state under symbolic checkpointing (which
        `global_shuffle` and `shuffled_records` switch on; e.g. `cache`,
        `rebatch`, `bucket_by_sequence_length`) is logged once, and no position
        is saved: a resumed run replays.
        """
        self.prune(keep=step)
        if self.unsavable:
            return
        prefix = self.prefix(step)
        start = time.perf_counter()
        try:
            tf.train.Checkpoint(iterator=iterator).write(prefix)
        except tf.errors.UnimplementedError as e:
            self.unsavable = True
            logging.warning(
                "The input position cannot be saved (%s); a resumed run replays every batch since its start.",
                e.message.split("}}")[-1].split(" [Op:")[0].strip(),
            )
            return
        if not self._reported:
            self._reported = True
            size = self.size(step)
            logging.info(
                "Input position saved with each checkpoint: %.1f KB for worker %d (%.2f s).",
                size / 1024,
                self.worker,
                time.perf_counter() - start,
            )
            if size > LARGE_STATE_BYTES:
                logging.warning(
                    "The saved input position is %.1f MB per checkpoint: the pipeline's shuffle buffer "
                    "is saved with it. Shuffle in-memory data with framework.data.global_shuffle (~1 KB) "
                    "and TFRecord files with framework.data.shuffled_records (a few KB).",
                    size / 2**20,
                )

    def read(self, iterator, step: int) -> bool:
        """Restores `iterator` to checkpoint `step`'s position; False (with a warning) when it cannot."""
        prefix = self.prefix(step)
        if not tf.io.gfile.exists(prefix + ".index"):
            return False
        try:
            tf.train.Checkpoint(iterator=iterator).read(prefix).assert_consumed()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            logging.warning(
                "Could not restore the input position at %s (%s: %.200s); replaying the input instead.",
                prefix,
                type(e).__name__,
                e,
            )
            return False
        return True

    def size(self, step: int) -> int:
        directory = os.path.dirname(self.prefix(step))
        name = f"worker-{self.worker}."
        return sum(
            tf.io.gfile.stat(os.path.join(directory, f)).length
            for f in tf.io.gfile.listdir(directory)
            if f.startswith(name)
        )

    def prune(self, keep: int = -1) -> None:
        """Removes the positions of checkpoints no longer kept (older than the newest one kept).

        The checkpoints are the step directories next to `directory`. Orbax
        drops old ones in the background, so a position may outlive its
        checkpoint until the next call.

        Args:
          keep: a step whose position stays (the one being saved).
        """
        if not tf.io.gfile.isdir(self.directory):
            return
        kept = set(_steps_in(os.path.dirname(self.directory)))
        if not kept:
            return
        newest = max(kept)
        for number in _steps_in(self.directory):
            if number < newest and number not in kept and number != keep:
                name = str(number)
                with contextlib.suppress(tf.errors.NotFoundError):  # another worker was first
                    tf.io.gfile.rmtree(os.path.join(self.directory, name))


def _steps_in(directory: str) -> list[int]:
    return [int(n.rstrip("/")) for n in tf.io.gfile.listdir(directory) if n.rstrip("/").isdigit()]
