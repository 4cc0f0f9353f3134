"""Triplet loss with online mining over the global batch.

    loss = losses.Triplet(margin=0.5, mining="batch_hard").on("embedding")

Labels are integer class ids `[batch]` (or `[batch, 1]`); predictions are
embeddings `[batch, dim]`. Distances are Euclidean (not squared), with a
square root whose gradient at distance 0 is 0 rather than NaN.

* batch_hard: per anchor, ``relu(max d(a, p) - min d(a, n) + margin)``
  over its positives p (same label, not itself) and negatives n; the term is
  the mean over anchors that have both.
* batch_all: every valid triplet (a, p, n) has loss
  ``relu(d(a, p) - d(a, n) + margin)``; the term is the mean over the
  triplets whose loss is positive (0 when there are none).

Distribution: mining is over the *global* batch, exactly as on one device.
Each replica all-gathers the embeddings, labels and weights of every
replica (`ReplicaContext.all_gather`, whose gradient sums the upstream
gradients of all replicas and returns each replica its own slice), mines
for its own anchors against the whole batch, and returns one value per own
anchor with a weight (batch_hard: 1 if the anchor has a positive and a
negative; batch_all: its number of positive triplets). The reduction
divides the sum over all anchors by the all-reduced sum of weights, so the
loss and the summed gradient equal the one-device ones. Costs with N
replicas: one all-gather per step; each replica computes the `[b, N*b]`
distances of its anchors (batch_all: `[b, N*b, N*b]` triplets).

Sample weights: an example with weight 0 (or a NaN label with
`mask_nan=True`) takes no part at all, neither as anchor nor as positive or
negative; a positive weight scales the example's contribution as an
anchor.
"""

from __future__ import annotations

import tensorflow as tf

from framework import distribute
from framework.losses.algebra import Term, Weight

MINING = ("batch_all", "batch_hard")


def pairwise_distances(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Euclidean distances `[len(a), len(b)]`; zero distances have zero gradient."""
    squared = (
        tf.reduce_sum(tf.square(a), axis=1, keepdims=True)
        - 2.0 * tf.matmul(a, b, transpose_b=True)
        + tf.reduce_sum(tf.square(b), axis=1)[None, :]
    )
    zero = squared <= 0.0  # also clamps round-off below 0
    return tf.where(zero, 0.0, tf.sqrt(tf.where(zero, 1.0, squared)))


def _global_batch(embeddings, labels, weights):
    """(all embeddings, all labels, all weights or None, offset of this replica's rows)."""
    if distribute.num_replicas() == 1:
        return embeddings, labels, weights, 0
    context = tf.distribute.get_replica_context()
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    owner = tf.fill(tf.shape(labels), replica)
    everyone = context.all_gather(embeddings, axis=0)  # differentiable
    rest = [labels, owner] + ([] if weights is None else [tf.stop_gradient(weights)])
    all_labels, all_owners, *all_weights = context.all_gather(rest, axis=0)
    offset = tf.reduce_sum(tf.cast(all_owners < replica, tf.int32))
    return everyone, all_labels, (all_weights or [None])[0], offset


class Triplet(Term):
    """Triplet loss on embeddings with batch-all or batch-hard mining.

    Args:
      margin: the distance by which negatives must be farther than positives.
      mining: "batch_hard" or "batch_all"; see the module docstring, which
        also states the semantics under distribution (exact: global mining).
      head: as for `Term`.
      weight: as for `Term`.
      name: as for `Term`.
      mask_nan: as for `Term`.

    Raises:
      ValueError: an unknown `mining` or a negative `margin`.
    """

    cast_labels = False  # int64 ids beyond 2**24 must stay distinct

    def __init__(
        self,
        margin: float = 1.0,
        *,
        mining: str = "batch_hard",
        head: str | None = None,
        weight: Weight = 1.0,
        name: str | None = None,
        mask_nan: bool = False,
    ):
        super().__init__(head=head, weight=weight, name=name, mask_nan=mask_nan)
        if mining not in MINING:
            raise ValueError(f"Triplet: mining must be one of {MINING}, got {mining!r}.")
        if not margin >= 0:
            raise ValueError(f"Triplet: margin must be >= 0, got {margin!r}.")
        self.margin, self.mining = float(margin), mining

    def validate(self, y_true, y_pred):
        head = f" on head {self.head!r}" if self.head else ""
        if y_pred.shape.rank != 2:
            raise ValueError(
                f"Loss term {self.name!r}{head} expects embeddings of shape [batch, dim], "
                f"got {tuple(y_pred.shape)}."
            )
        rank = y_true.shape.rank
        if not (rank == 1 or (rank == 2 and y_true.shape[1] == 1)):
            raise ValueError(
                f"Loss term {self.name!r}{head} expects integer class ids of shape [batch] or [batch, 1], "
                f"got labels of shape {tuple(y_true.shape) if rank is not None else '?'}."
            )

    def values_and_weights(self, y_true, y_pred, sample_weight):
        labels = tf.reshape(y_true, [-1])
        n = tf.shape(labels)[0]
        weights = None if sample_weight is None else tf.reshape(sample_weight, [-1])
        everyone, all_labels, all_weights, offset = _global_batch(y_pred, labels, weights)
        distances = pairwise_distances(y_pred, everyone)  # [n, N]: own anchors x global batch
        if isinstance(offset, int):
            itself = tf.eye(n, dtype=tf.bool)
        else:
            itself = tf.one_hot(offset + tf.range(n), tf.shape(all_labels)[0], on_value=True, off_value=False)
        same = labels[:, None] == all_labels[None, :]
        positive, negative = same & ~itself, ~same
        if weights is not None:  # (masks only when needed: XLA recomputes them per triplet)
            present = (all_weights > 0.0)[None, :]
            # An absent anchor (weight 0) gets no positives, hence no triplets.
            positive = positive & present & (weights > 0.0)[:, None]
            negative = negative & present
        if self.mining == "batch_hard":
            return self._batch_hard(distances, positive, negative, weights)
        return self._batch_all(distances, positive, negative, weights)

    def _batch_hard(self, distances, positive, negative, weights):
        hardest_positive = tf.reduce_max(tf.where(positive, distances, 0.0), axis=1)
        hardest_negative = tf.reduce_min(tf.where(negative, distances, tf.float32.max), axis=1)
        valid = tf.reduce_any(positive, axis=1) & tf.reduce_any(negative, axis=1)
        values = tf.where(valid, tf.nn.relu(hardest_positive - hardest_negative + self.margin), 0.0)
        valid = tf.cast(valid, tf.float32)
        return values, valid if weights is None else valid * weights

    def _batch_all(self, distances, positive, negative, weights):
        valid = positive[:, :, None] & negative[:, None, :]
        margins = distances[:, :, None] - distances[:, None, :] + self.margin
        # [anchors, p * n]: XLA on CPU reduces one trailing axis faster than two.
        losses = tf.reshape(tf.where(valid, tf.nn.relu(margins), 0.0), [tf.shape(valid)[0], -1])
        count = tf.reduce_sum(tf.cast(losses > 0.0, tf.float32), axis=1)
        values = tf.math.divide_no_nan(tf.reduce_sum(losses, axis=1), count)
        return values, count if weights is None else count * weights
