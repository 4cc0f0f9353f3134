"""One random stream per replica: seeds folded with the replica's global index.

A `keras.random.SeedGenerator` (a Dropout layer's, GaussianNoise's, a random
preprocessing layer's, or one a trainer holds for noise in its step) keeps its
state in one variable; under a distribution strategy that variable is
mirrored and every replica would draw the same seed, hence the same masks
and noise for every slice of the global batch. Inside the framework's replica
steps (`framework.loop`) each draw's seed is replaced by `replica_seed(seed)`:

    replica 0:  the drawn seed itself (one replica draws what one device draws)
    replica r:  tf.random.experimental.stateless_fold_in(seed, r)  (Philox)

where r is `replica_id_in_sync_group`, global across workers under
MultiWorkerMirroredStrategy. The generator's state advances as before, by the
same increment on every replica, so the mirrored copies stay equal, a
checkpoint holds every replica's stream and a resumed run draws what an
unbroken one draws. Draws seeded by an int (`seed=42`) are the same on every
replica, as asked.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from framework.optim import keras_internals


def replica_seed(seed: tf.Tensor) -> tf.Tensor:
    """The seed this replica draws with for a draw seeded by `seed`.

    Args:
      seed: a stateless random seed, an int tensor of shape [2].

    Returns:
      `seed` outside a replica context of several replicas and on replica 0;
      elsewhere `seed` folded with the replica's global index, of `seed`'s dtype.
    """
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return seed
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync == 1:
        return seed
    seed = tf.convert_to_tensor(seed)
    replica = context.replica_id_in_sync_group
    static = tf.get_static_value(replica)
    if static is not None:  # MirroredStrategy, MultiWorkerMirroredStrategy: known when traced
        if int(static) == 0:
            return seed
        return tf.random.experimental.stateless_fold_in(
            seed, tf.constant(int(static), seed.dtype), alg="philox"
        )
    folded = tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, seed.dtype), alg="philox")
    return tf.where(tf.equal(replica, 0), seed, folded)


@contextlib.contextmanager
def replica_streams():
    """Within (a replica step being traced): SeedGenerator draws use `replica_seed`."""
    keras_internals.install_seed_folding(replica_seed)
    with keras_internals.folded_seed_draws():
        yield
