"""How a pipeline's batches are laid out over replicas: the last step spread, batches of no rows.

`distribute_datasets_from_function` deals a pipeline's batches to its
replicas in turn. `spread_last_step` regroups a last step that does not divide
among them; `empty_batches` pads an evaluation input of a worker that ends
before the others (`framework.data.DistributedInput`'s `pad_workers`).
"""

from __future__ import annotations

import tensorflow as tf


def spread_last_step(dataset: tf.data.Dataset, replicas: int) -> tf.data.Dataset:
    """Per-replica batches regrouped so that no replica gets an empty batch when avoidable.

    `distribute_datasets_from_function` deals a pipeline's batches to its
    `replicas` in turn; when their count is not a multiple of `replicas`, the
    last step gives the replicas without a batch an empty one (a BatchNorm's
    statistics turn NaN; some kernels fail on it). Each group of `replicas`
    consecutive batches (one global step) is concatenated and cut again:
    replica r gets rows [n*r//R, n*(r+1)//R) of its n rows. Equal batches come
    out unchanged and every step keeps its examples, so training stays exact.
    A dataset whose batch count is a multiple of `replicas` (or infinite) is
    returned as it is.
    """
    count = int(dataset.cardinality())
    leaves = tf.nest.flatten(dataset.element_spec)
    batched = all(isinstance(s, tf.TensorSpec) and s.shape.rank for s in leaves)
    if replicas == 1 or not batched or count == tf.data.INFINITE_CARDINALITY or count % replicas == 0:
        return dataset

    def merge(t):
        if isinstance(t, tf.RaggedTensor):
            return t.merge_dims(0, 1)
        return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))

    def rows(step, r):
        def cut(t):
            n = tf.shape(t, out_type=tf.int64)[0]
            return t[n * r // replicas : n * (r + 1) // replicas]

        return tf.nest.map_structure(cut, step)

    def split(*group):
        step = tf.nest.map_structure(merge, group[0] if len(group) == 1 else group)
        return tf.data.Dataset.range(replicas).map(lambda r: rows(step, r))

    spread = dataset.ragged_batch(replicas).flat_map(split)
    if count >= 0:
        spread = spread.apply(tf.data.experimental.assert_cardinality(-(-count // replicas) * replicas))
    return spread


def empty_batches(element_spec) -> tf.data.Dataset | None:
    """Endless batches of no rows shaped like `element_spec`; None when a leaf is not a dense tensor."""
    leaves = tf.nest.flatten(element_spec)
    if not all(isinstance(s, tf.TensorSpec) and s.shape.rank for s in leaves):
        return None

    def empty(spec):
        shape = [0] + [d if d is not None else 0 for d in spec.shape[1:]]
        return tf.fill(shape, "") if spec.dtype == tf.string else tf.zeros(shape, spec.dtype)

    return tf.data.Dataset.from_tensors(tf.nest.map_structure(empty, element_spec)).repeat()
