"""In-batch contrastive learning: NT-Xent (SimCLR's InfoNCE) with negatives from the global batch.

    loss = losses.NTXent(temperature=0.1).on("z")   # head "z": [batch, 2, dim], two views per example

Predictions hold two embeddings (views) per example, stacked on axis 1
(`keras.ops.stack([z1, z2], axis=1)`). With the 2M views of the global batch
(M examples), unit vectors u (the embeddings L2-normalized, unless
``normalize=False``) and temperature t, the loss of anchor view a whose
positive p is the other view of its example is

    l(a) = -log( exp(u_a . u_p / t) / sum_{k != a} exp(u_a . u_k / t) )

over the 2M - 1 other views k of the global batch: the other 2M - 2 views
are the negatives. The term is the mean of l over the 2M anchors, as in
SimCLR (Chen et al., 2020). Each example gives two values, one per view as
anchor; a sample weight scales both, and an example of weight 0 takes no
part at all, neither as anchor nor as negative (e.g. the rows of an
evaluation's padding).

Distribution: the negatives are the *global* batch's, exactly as on one
device, whatever the number of replicas or workers. Each replica gathers
the embeddings of every replica (`framework.distribute.all_gather_with_offset`
with ``gradient="all_replicas"``), scores its own anchors against all 2M
views, and returns their values; the reduction divides the sum over all
anchors by the all-reduced count. Each replica's loss is thus its share of
the global loss, and the gradient of the gather brings every replica's pull
on an example's embeddings back to the replica that owns the example: the
optimizer's sum over replicas is the one-device gradient (the rule is
derived in `framework.gather`). Costs with N replicas: one all-gather of the
embeddings per step (and one of the weights when there are any); each
replica computes the `[2b, 2M]` similarities of its b examples.

A loss written the natural way, contrasting each example with its own
replica's examples only, optimizes another objective (fewer negatives: an
easier task and a lower loss) that changes with the replica count.
"""

from __future__ import annotations

import tensorflow as tf

from framework import gather
from framework.losses.algebra import Term, Weight


class NTXent(Term):
    """NT-Xent / InfoNCE over the global batch: two views per example, the rest negatives.

    Label-free: it reads only its head's predictions, `[batch, 2, dim]`
    (the two views' embeddings of each example), so the head needs no
    labels in the batch. See the module docstring for the formula and the
    semantics under distribution (exact: negatives from the global batch).

    Args:
      temperature: the softmax temperature t > 0 (SimCLR: 0.1 to 0.5).
      normalize: L2-normalize the embeddings first (cosine similarity, as
        SimCLR); False: raw dot products.
      head: the model output holding the views; None for a single-output model.
      weight, name: as for `Term`.

    Raises:
      ValueError: a temperature that is not positive.
    """

    reads_labels = False

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        normalize: bool = True,
        head: str | None = None,
        weight: Weight = 1.0,
        name: str | None = None,
    ):
        super().__init__(head=head, weight=weight, name=name)
        if not temperature > 0:
            raise ValueError(f"NTXent: temperature must be > 0, got {temperature!r}.")
        self.temperature, self.normalize = float(temperature), bool(normalize)

    @property
    def base_name(self) -> str:
        return "nt_xent"

    def validate(self, y_true, y_pred):
        del y_true
        shape = y_pred.shape if isinstance(y_pred, tf.Tensor) else None
        if shape is None or shape.rank != 3 or shape[1] not in (2, None):
            head = f" on head {self.head!r}" if self.head else ""
            got = f"shape {tuple(shape)}" if shape is not None and shape.rank is not None else repr(y_pred)
            raise ValueError(
                f"Loss term {self.name!r}{head} expects the two views' embeddings of each example, "
                f"shape [batch, 2, dim] (keras.ops.stack([z1, z2], axis=1)), got {got}."
            )

    def values_and_weights(self, y_true, y_pred, sample_weight):
        del y_true
        z = tf.math.l2_normalize(y_pred, axis=-1) if self.normalize else y_pred
        dim = tf.shape(z)[-1]
        everyone, offset = gather.all_gather_with_offset(z, gradient="all_replicas")
        keys = tf.reshape(everyone, [-1, dim])  # [2M, dim]: example j's views are rows 2j, 2j + 1
        anchors = tf.reshape(z, [-1, dim])  # [2b, dim]
        logits = tf.matmul(anchors, keys, transpose_b=True) / self.temperature
        rows = 2 * offset + tf.range(tf.shape(anchors)[0])  # the anchors' rows in `keys`
        count = tf.shape(keys)[0]
        itself = tf.one_hot(rows, count, on_value=True, off_value=False)
        positive = tf.one_hot(tf.bitwise.bitwise_xor(rows, 1), count, on_value=True, off_value=False)
        others = ~itself
        weights = None
        if sample_weight is not None:
            weights = tf.reshape(sample_weight, [-1])
            everyone_weights = gather.all_gather(tf.stop_gradient(weights), gradient="all_replicas")
            present = tf.repeat(everyone_weights > 0.0, 2)
            # An absent anchor keeps its positive, so that its (unused) value stays finite.
            others = others & (present[None, :] | positive)
        log_denominator = tf.reduce_logsumexp(tf.where(others, logits, float("-inf")), axis=1)
        values = log_denominator - tf.reduce_sum(tf.where(positive, logits, 0.0), axis=1)
        return tf.reshape(values, [-1, 2]), weights
