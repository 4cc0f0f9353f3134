"""Retrieval and ranking metrics Keras lacks: `RecallAtK` and `NDCG`.

Both are stateful Keras metrics: updated inside the replica step, reset per
epoch and per evaluation, and exact under mirrored replicas.

* `NDCG` keeps a sum of per-list scores and a count of lists: both add
  across replicas, so the summed-on-read variables give the global mean.
* `RecallAtK` needs every embedding of the evaluation set at once (each
  query is answered from all the others). Each update all-gathers the
  batch from every replica and appends it to a fixed-capacity buffer that is
  identical on all replicas; `result()` ranks within the buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def _all_gather(value: tf.Tensor) -> tf.Tensor:
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_gather(value, axis=0)


class RecallAtK(keras.metrics.Metric):
    """Share of queries whose `k` nearest neighbours (Euclidean) include one of their class.

    Every example in the evaluation set is a query against all the others.
    `update_state(labels, embeddings)` takes integer labels `[batch]` and
    embeddings `[batch, dim]`. `k` may be a list: `result()` then returns
    `{"1": r1, "5": r5}` (logged as `recall_at_k/1`, `recall_at_k/5`).

    Args:
      k: an int or a sequence of ints.
      capacity: the most examples one evaluation may hold; exceeding it fails.
      dim: the embedding size.
    """

    def __init__(
        self, k: int | Sequence[int] = 1, *, dim: int, capacity: int = 10_000, name: str = "recall_at_k"
    ):
        super().__init__(name=name)
        self.ks = [int(k)] if isinstance(k, int) else [int(v) for v in k]
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"RecallAtK: k must be >= 1, got {k!r}.")
        self.single = isinstance(k, int)
        self.capacity, self.dim = int(capacity), int(dim)
        # Identical on every replica (filled with all-gathered batches): read one copy.
        self.embeddings = self.add_variable(
            shape=(self.capacity, self.dim),
            initializer="zeros",
            name="embeddings",
            aggregation="only_first_replica",
        )
        self.labels = self.add_variable(
            shape=(self.capacity,),
            initializer="zeros",
            dtype="int32",
            name="labels",
            aggregation="only_first_replica",
        )
        self.count = self.add_variable(
            shape=(), initializer="zeros", dtype="int32", name="count", aggregation="only_first_replica"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = _all_gather(tf.reshape(tf.cast(y_true, tf.int32), [-1]))
        embeddings = _all_gather(tf.cast(y_pred, self.embeddings.dtype))
        n = tf.shape(labels)[0]
        start = tf.convert_to_tensor(self.count)
        end = start + n
        with tf.control_dependencies(
            [
                tf.debugging.assert_less_equal(
                    end, self.capacity, message=f"{self.name}: more examples than capacity"
                )
            ]
        ):
            indices = tf.range(start, end)[:, None]
        self.embeddings.assign(tf.tensor_scatter_nd_update(self.embeddings, indices, embeddings))
        self.labels.assign(tf.tensor_scatter_nd_update(self.labels, indices, labels))
        self.count.assign(end)

    def result(self):
        n = tf.convert_to_tensor(self.count)
        embeddings = tf.convert_to_tensor(self.embeddings)[:n]
        labels = tf.convert_to_tensor(self.labels)[:n]
        squared = tf.reduce_sum(tf.square(embeddings), axis=1)
        distances = (
            squared[:, None] - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True) + squared[None, :]
        )
        distances = tf.where(tf.eye(n, dtype=tf.bool), tf.constant(float("inf"), distances.dtype), distances)
        k_max = tf.minimum(max(self.ks), tf.maximum(n - 1, 1))
        _, nearest = tf.math.top_k(-distances, k=k_max)
        hits = tf.equal(tf.gather(labels, nearest), labels[:, None])
        out = {}
        for k in self.ks:
            found = tf.reduce_any(hits[:, :k], axis=1)
            out[str(k)] = tf.math.divide_no_nan(
                tf.reduce_sum(tf.cast(found, tf.float32)), tf.cast(n, tf.float32)
            )
        return out[str(self.ks[0])] if self.single else out

    def reset_state(self):
        for variable in (self.embeddings, self.labels, self.count):
            variable.assign(tf.zeros_like(variable))


class NDCG(keras.metrics.Metric):
    """Mean normalized discounted cumulative gain at `k` over lists.

    `update_state(relevance, scores)`: graded relevance labels and predicted
    scores, both `[batch, list_size]`. Items are ranked by score; the gain of
    relevance r is `2**r - 1` (`gain="exponential"`) or `r` (`"linear"`, as
    scikit-learn's `ndcg_score`), discounted by `log2(rank + 1)`. Lists with
    no relevant item have no ideal ranking and are left out of the mean.

    Args:
      k: how many top-ranked items count.
      gain: "exponential" (`2**r - 1`) or "linear" (`r`).
      name: the logged name; default `ndcg_<k>`.

    Raises:
      ValueError: an unknown `gain`.
    """

    def __init__(self, k: int = 5, *, gain: str = "exponential", name: str | None = None):
        super().__init__(name=name or f"ndcg_{k}")
        if gain not in ("exponential", "linear"):
            raise ValueError(f"NDCG: gain must be 'exponential' or 'linear', got {gain!r}.")
        self.k, self.gain = int(k), gain
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", aggregation="sum")
        self.lists = self.add_variable(shape=(), initializer="zeros", name="lists", aggregation="sum")

    def _dcg(self, relevance, order):
        ranked = tf.gather(relevance, order, batch_dims=1)[:, : self.k]
        gains = tf.pow(2.0, ranked) - 1.0 if self.gain == "exponential" else ranked
        discounts = tf.math.log(tf.range(2, tf.shape(ranked)[1] + 2, dtype=tf.float32)) / tf.math.log(2.0)
        return tf.reduce_sum(gains / discounts, axis=1)

    def update_state(self, y_true, y_pred, sample_weight=None):
        relevance = tf.cast(y_true, tf.float32)
        scores = tf.cast(y_pred, tf.float32)
        size = tf.shape(scores)[1]
        by_score = tf.math.top_k(scores, k=size, sorted=True).indices
        ideal = tf.math.top_k(relevance, k=size, sorted=True).indices
        dcg, idcg = self._dcg(relevance, by_score), self._dcg(relevance, ideal)
        valid = idcg > 0
        self.total.assign_add(tf.reduce_sum(tf.where(valid, dcg / tf.where(valid, idcg, 1.0), 0.0)))
        self.lists.assign_add(tf.reduce_sum(tf.cast(valid, tf.float32)))

    def result(self):
        return tf.math.divide_no_nan(tf.convert_to_tensor(self.total), tf.convert_to_tensor(self.lists))

    def reset_state(self):
        self.total.assign(0.0)
        self.lists.assign(0.0)
