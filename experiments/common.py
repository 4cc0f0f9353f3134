"""What the experiments share: in-memory arrays as per-replica batches.

The experiments import it as a sibling module (`from common import batches`):
`python experiments/<name>.py` puts `experiments/` on the import path.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

import framework


def batches(
    arrays: Any,
    input_context: tf.distribute.InputContext,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Per-replica batches of `arrays` (a nest of numpy arrays sharing their first axis).

    batch_size: the global batch (`config.batch_size`). Global batch j holds
      the same examples on one device and on N replicas
      (`framework.distribute.global_batches`), so the run does not depend on
      the layout.
    shuffle_seed: reshuffle every epoch, reproducibly (training); None keeps
      the order (evaluation).
    """
    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle_seed is not None:
        count = len(tf.nest.flatten(arrays)[0])
        dataset = dataset.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = framework.distribute.global_batches(dataset, input_context, batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)
