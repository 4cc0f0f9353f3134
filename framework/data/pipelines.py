"""One input pipeline: a dataset hook, the dataset it builds for an input context, and what that tells."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from framework import distribute
from framework.data.batch_layout import spread_last_step

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


def fixed_batches(hook: Hook, count: int) -> Hook:
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


def pass_steps(pipeline: Pipeline) -> int:
    """Steps one pass of a finite pipeline yields; 0 when its length is unknown."""
    return math.ceil(pipeline.cardinality / pipeline.replicas) if pipeline.cardinality > 0 else 0


def host_only(strategy: tf.distribute.Strategy) -> bool:
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


def build_pipeline(
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
