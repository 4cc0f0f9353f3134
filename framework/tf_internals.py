"""TensorFlow's private names the framework relies on, each with why; no other module names them.

A TensorFlow upgrade that breaks one of these fails here, in one place. `optim/keras_internals.py`
is the matching quarantine for Keras.
"""

from __future__ import annotations

import tensorflow as tf


def set_collective_key_base(strategy_cls: type, base: int) -> None:
    """Numbers the collective groups of strategies of `strategy_cls` created next from `base`.

    Why: TensorFlow numbers collective groups from the same base in every strategy of a process and
    caches each instance's shape by key; there is no public way to give a second strategy its own keys.
    """
    strategy_cls._collective_key_base = base


def coordination_service_configured() -> bool:
    """Whether this process's eager context already has TensorFlow's coordination service.

    Why: the coordination service (heartbeats that notice a lost worker) can only be configured
    through the eager context, which TensorFlow does not expose publicly.
    """
    from tensorflow.python.eager import context

    return context.context().coordination_service is not None


def configure_coordination_service(cluster, jobs: list, heartbeat_timeout_in_ms: int) -> None:
    """Configures the standalone coordination service, led by the cluster's coordination leader.

    Why: as for `coordination_service_configured`; `multi_worker_util` picks the leader as
    MultiWorkerMirroredStrategy itself does.
    """
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=heartbeat_timeout_in_ms,
    )


def multi_worker_count(strategy: tf.distribute.MultiWorkerMirroredStrategy) -> int:
    """The number of workers of a MultiWorkerMirroredStrategy.

    Why: the strategy exposes no public worker count (TPUStrategy has `extended.num_hosts`).
    """
    return int(strategy.extended._num_workers)


def serialized_graph(dataset: tf.data.Dataset) -> tf.Tensor:
    """`dataset`'s graph as a serialized GraphDef, failing on state a checkpoint cannot hold.

    Why: the only way to ask tf.data, before iterating, whether an iterator over `dataset` can be
    saved (ExternalStatePolicy.FAIL raises naming the op that cannot).
    """
    return dataset._as_serialized_graph(external_state_policy=tf.data.experimental.ExternalStatePolicy.FAIL)


def global_shuffle_dataset(
    dataset: tf.data.Dataset, seed: int, reshuffle_each_iteration: bool
) -> tf.data.Dataset:
    """tf.data's global shuffle op over a random-access `dataset`.

    Why: TensorFlow ships the op (a seeded permutation of indices, checkpointed in ~1 KB) but
    exports it only through `tf.data.experimental.global_shuffle`'s private module in this version.
    """
    from tensorflow.python.data.experimental.ops import global_shuffle_op

    return global_shuffle_op._global_shuffle(
        dataset, seed=seed, reshuffle_each_iteration=reshuffle_each_iteration
    )
