"""Strategies from config, logical CPU devices, and replica-context helpers.

`make_strategy(config.distribution)` is the only place a strategy is chosen.
The helpers below are called inside `strategy.run` (replica context) and are
cheap no-ops when there is a single replica, so one-device runs pay nothing
for being distribution-exact. `all_gather` / `replica_offset` (from
`framework.gather`) bring the global batch into a step, with the gradient
rule stated there.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re

import ml_collections
import tensorflow as tf
from absl import logging

from framework import tf_internals
from framework.gather import all_gather, all_gather_with_offset, replica_offset  # noqa: F401 (public here)


def configure_cpu_devices(count: int) -> list[str]:
    """Splits the host CPU into `count` logical devices; returns their names.

    TensorFlow allows this only before its runtime starts. If it has already
    started with at least `count` logical CPUs, the first `count` are used.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    with contextlib.suppress(RuntimeError):  # runtime already initialized: use what exists
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    names = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(names) < count:
        raise RuntimeError(
            f"config.distribution.cpu_devices={count}, but TensorFlow already started with "
            f"{len(names)} logical CPU device(s): a TensorFlow op ran before the Trainer was created "
            "(building a tf.data.Dataset or a tensor is one), and logical devices can only be made "
            "before the first. Create the Trainer first and build datasets after it, or call "
            f"framework.distribute.configure_cpu_devices({count}) at the top of the script, before any "
            "TensorFlow op. To evaluate a finished run, Trainer.from_workdir uses this process's devices."
        )
    return names[:count]


def _tpu_present() -> bool:
    return bool(os.environ.get("TPU_NAME") or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _tpu_strategy(address: str) -> tf.distribute.Strategy:
    if address == "local" and not _tpu_present():
        # Checked before TensorFlow is touched: connecting would reset its context.
        raise RuntimeError(
            "config.distribution.strategy='tpu' with config.distribution.tpu='local', but this machine "
            "has no TPU (no /dev/accel* or /dev/vfio device, no TPU_NAME). Run on a TPU VM, set "
            "config.distribution.tpu to the TPU's name or grpc:// address, or use strategy 'auto', "
            "'one_device' or 'mirrored'."
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise RuntimeError(
            f"config.distribution.strategy='tpu' but no TPU was found at "
            f"config.distribution.tpu={address!r} ({type(e).__name__}: {e}). On a TPU VM use "
            "'local'; elsewhere use strategy 'auto', 'one_device' or 'mirrored'."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


_strategies_made = 0


def _fresh_collective_keys(cls):
    """Gives each new collective strategy its own group keys.

    TensorFlow numbers collective groups from the same base in every strategy
    of a process, and its runtime caches each instance's shape by key: a
    second mirrored strategy in one process (a notebook, a test suite) would
    collide with the first. All workers create their strategies in the same
    order, so they still agree on the keys.
    """
    global _strategies_made
    tf_internals.set_collective_key_base(cls, 10_000 * _strategies_made)
    _strategies_made += 1
    return cls


def _configure_coordination(peer_timeout_secs: int) -> None:
    """TensorFlow's coordination service, with heartbeats that notice a lost worker.

    When a worker stops sending heartbeats for `peer_timeout_secs`, the
    service fails every other worker's pending and next collective with an
    error naming the lost task, and they exit; rerunning every worker resumes
    from the last checkpoint. MultiWorkerMirroredStrategy keeps a
    configuration made before it is created.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

    if tf_internals.coordination_service_configured():
        return
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec()
    if resolver.task_type not in ("chief", "worker"):
        return
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
        for job in ("chief", "worker")
        if job in cluster.jobs
    ]
    tf_internals.configure_coordination_service(cluster, jobs, int(peer_timeout_secs * 1000))


def cluster_tasks() -> int:
    """The chief and worker tasks the TF_CONFIG environment variable describes (0 without one).

    Raises:
      RuntimeError: TF_CONFIG is set but is not valid JSON.
    """
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return 0
    try:
        cluster = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    except (ValueError, AttributeError) as e:  # json's errors are ValueErrors
        raise RuntimeError(
            f"The TF_CONFIG environment variable is not a JSON object ({e}): {text[:200]!r}"
        ) from e
    return sum(cluster.num_tasks(job) for job in ("chief", "worker") if job in cluster.jobs)


def make_strategy(dist: ml_collections.ConfigDict) -> tf.distribute.Strategy:
    """Builds the strategy named by `config.distribution`.

    "auto": a TPU if this machine has one; else, when TF_CONFIG describes a
    cluster of several tasks, this process's worker of a multi-worker run; else
    every local GPU (or `cpu_devices` logical CPUs) mirrored; else one device.
    """
    name = dist.strategy
    tasks = cluster_tasks()
    if name == "auto" and tasks > 1 and not _tpu_present():
        name = "multi_worker"
    elif name in ("one_device", "mirrored") and tasks > 1:
        logging.warning(
            "TF_CONFIG describes a cluster of %d tasks, but config.distribution.strategy=%r: this "
            "process trains alone and writes its workdir as if it were the only one. Use 'multi_worker' "
            "(or 'auto') to train together.",
            tasks,
            name,
        )
    cpus = configure_cpu_devices(dist.cpu_devices) if dist.cpu_devices else None
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise RuntimeError(
                "config.distribution.strategy='multi_worker' needs the TF_CONFIG environment "
                "variable describing the cluster and this worker's task."
            )
        _configure_coordination(dist.peer_timeout_secs)
        return _fresh_collective_keys(tf.distribute.MultiWorkerMirroredStrategy)()
    if name == "tpu" or (name == "auto" and _tpu_present()):
        return _tpu_strategy(dist.tpu)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "mirrored":
        return _fresh_collective_keys(tf.distribute.MirroredStrategy)(gpus or cpus or None)
    if name == "auto" and len(gpus) > 1:
        return _fresh_collective_keys(tf.distribute.MirroredStrategy)(gpus)
    if name == "auto" and not gpus and cpus and len(cpus) > 1:
        return _fresh_collective_keys(tf.distribute.MirroredStrategy)(cpus)
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")


def global_batches(
    dataset: tf.data.Dataset,
    input_context: tf.distribute.InputContext,
    global_batch_size: int,
    *,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Per-replica batches whose global batch j holds the same examples on any layout.

    `dataset` yields single examples, in the same order on every worker (give
    shuffles a seed). Each input pipeline batches globally and keeps its own
    replicas' slices: of the N replicas in sync, replica r gets rows
    [n*r//N, n*(r+1)//N) of each global batch of n rows. One device, N
    mirrored replicas and N workers therefore train on identical global
    batches, so they reach the same weights. Every worker reads all the data:
    right for data that fits in memory; shard files for large datasets.
    drop_remainder: drop a short last global batch (TPUs need static shapes).
    """
    return split_global_batches(
        dataset.batch(global_batch_size, drop_remainder=drop_remainder), input_context
    )


def split_global_batches(
    dataset: tf.data.Dataset, input_context: tf.distribute.InputContext
) -> tf.data.Dataset:
    """A dataset of global batches cut into this input pipeline's per-replica batches.

    Of the N replicas in sync, replica r gets rows [n*r//N, n*(r+1)//N) of
    each global batch of n rows, so any layout sees the same global batches.
    `dataset` must yield the same batches on every worker.
    """
    replicas = input_context.num_replicas_in_sync
    local = replicas // input_context.num_input_pipelines
    first = input_context.input_pipeline_id * local

    def rows(replica, element):
        def cut(t):
            n = tf.shape(t)[0]
            return t[n * replica // replicas : n * (replica + 1) // replicas]

        return tf.nest.map_structure(cut, element)

    def pack(args):
        return args[0] if len(args) == 1 else args

    if local == 1:
        return dataset.map(lambda *e: rows(first, pack(e)))
    count = tf.get_static_value(dataset.cardinality())
    sliced = dataset.flat_map(
        lambda *e: tf.data.Dataset.range(local).map(lambda i: rows(first + tf.cast(i, tf.int32), pack(e)))
    )
    if count is not None and count >= 0:
        sliced = sliced.apply(tf.data.experimental.assert_cardinality(int(count) * local))
    elif count == tf.data.INFINITE_CARDINALITY:  # flat_map would make it unknown
        sliced = sliced.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    return sliced


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one process that writes checkpoints, summaries and logs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Processes that run this strategy's steps together (hosts of a TPU slice, multi-worker tasks)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return tf_internals.multi_worker_count(strategy)
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return int(strategy.extended.num_hosts)
    return 1


def lost_workers_message(error: Exception) -> str:
    """What a worker logs when a collective failed because another worker is gone: who, and the fix."""
    lost = sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", str(error)))) or ["unknown"]
    return (
        f"Lost contact with worker(s) {', '.join(lost)}: this worker stops too. Rerun every worker "
        "with the same command to resume from the last checkpoint."
    )


_agreements: dict[int, tuple[tf.distribute.Strategy, object]] = {}


def mean_over_workers(strategy: tf.distribute.Strategy, values: list[float]) -> list[float]:
    """The mean of `values` over every replica of every worker: one all-reduce, also a barrier.

    Host-side decisions that change which collectives run next (stop, save,
    restore, how many steps a compiled call takes) must be taken from agreed
    values: every worker calls this at the same point of its loop. With one
    worker it returns `values` without communicating.
    """
    if num_workers(strategy) == 1:
        return [float(v) for v in values]
    if id(strategy) not in _agreements:

        @tf.function
        def agree(values):
            def replica(local):
                return tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.MEAN, tf.identity(local)
                )

            return strategy.experimental_local_results(strategy.run(replica, args=(values,)))[0]

        _agreements[id(strategy)] = (strategy, agree)
    return [float(v) for v in _agreements[id(strategy)][1](tf.constant(values, tf.float64)).numpy()]


def any_worker(strategy: tf.distribute.Strategy, *flags: bool) -> tuple[bool, ...]:
    """For each flag, whether any worker raised it (see `mean_over_workers`)."""
    return tuple(v > 0 for v in mean_over_workers(strategy, [float(bool(f)) for f in flags]))


def per_worker(strategy: tf.distribute.Strategy, worker: int, value: int) -> list[int]:
    """Every worker's `value` (an integer), by worker index: one all-reduce (see `mean_over_workers`).

    Each worker contributes `value` at its own index; workers feed equal numbers of replicas.
    """
    workers = num_workers(strategy)
    if workers == 1:
        return [int(value)]
    slots = [0.0] * workers
    slots[worker] = float(value)
    return [round(v * workers) for v in mean_over_workers(strategy, slots)]


def describe(strategy: tf.distribute.Strategy) -> str:
    # MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy.
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        return (
            f"MultiWorkerMirroredStrategy with {strategy.num_replicas_in_sync} replica(s) on "
            f"{num_workers(strategy)} workers; this is {resolver.task_type} {resolver.task_id}"
        )
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"


# ---- replica-context helpers ------------------------------------------------


def num_replicas() -> int:
    """Replicas in sync for the current context (1 outside any strategy)."""
    return tf.distribute.get_replica_context().num_replicas_in_sync if _in_replica() else 1


def _in_replica() -> bool:
    return tf.distribute.get_replica_context() is not None


def all_reduce_sum(value):
    """Sums a (nested) value over replicas; identity with one replica.

    The gradient of the sum is the sum of every replica's upstream gradient:
    a loss built on all-reduced statistics must be divided by the replica
    count (see `losses.algebra`).
    """
    if num_replicas() == 1 or not tf.nest.flatten(value):  # TF fails on an empty all-reduce
        return value
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)


def log_strategy(strategy: tf.distribute.Strategy) -> None:
    logging.info("Distribution: %s", describe(strategy))
