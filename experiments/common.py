"""What the experiments share: in-memory arrays as per-replica batches, and the digits data.

`ArraysTrainer` is the template for data that fits in memory: a subclass
returns its (train, eval) arrays from `load_arrays(config)` and gets both
datasets batched the same way on any number of replicas. The experiments
import this module as `from common import ...`: `python experiments/<name>.py`
puts `experiments/` on the import path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import framework


def batches(
    arrays: Any,
    input_context: tf.distribute.InputContext,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    endless: bool = False,
) -> tf.data.Dataset:
    """Per-replica batches of `arrays` (a nest of numpy arrays sharing their first axis).

    batch_size: the global batch (`config.batch_size`). Global batch j holds
      the same examples on one device and on N replicas
      (`framework.distribute.global_batches`), so the run does not depend on
      the layout.
    shuffle_seed: reshuffle every epoch, reproducibly (training); None keeps
      the order (evaluation).
    endless: repeat forever (a step-based run), reshuffled each pass by
      `framework.data.global_shuffle`, whose position a checkpoint saves in
      about a kilobyte (a shuffle buffer of all the arrays would be saved whole).
    """
    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle_seed is not None and endless:
        dataset = framework.data.global_shuffle(dataset, shuffle_seed).repeat()
    elif shuffle_seed is not None:
        count = len(tf.nest.flatten(arrays)[0])
        dataset = dataset.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    elif endless:
        dataset = dataset.repeat()
    dataset = framework.distribute.global_batches(dataset, input_context, batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


class ArraysTrainer(framework.Trainer):
    """A `Trainer` whose training and evaluation data are in-memory arrays.

    Subclasses implement `load_arrays(config)`; `self.train_data` and
    `self.eval_data` hold its result, and the datasets are `batches` of them
    (training reshuffled every epoch from `config.seed`).
    """

    def __init__(self, config, workdir=None, **kwargs):
        self.train_data, self.eval_data = self.load_arrays(config)
        super().__init__(config, workdir, **kwargs)

    def load_arrays(self, config) -> tuple[Any, Any]:
        """The (train, eval) data: each a nest of numpy arrays sharing their first axis, e.g. `(x, y)`.

        Args:
          config: the run's config, as given to the constructor.

        Returns:
          `(train_data, eval_data)`; `eval_data` may be None (no evaluation).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load_arrays(config).")

    def build_train_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return batches(self.train_data, input_context, self.config.batch_size, shuffle_seed=self.config.seed)

    def build_eval_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset | None:
        if self.eval_data is None:
            return None
        return batches(self.eval_data, input_context, self.config.batch_size)


def digits_split(eval_fraction: float, seed: int) -> list[np.ndarray]:
    """Scikit-learn's 1,797 8x8 digits, scaled to [0, 1], split stratified: x_train, x_eval, y_train, y_eval."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype("float32")
    return train_test_split(
        images, labels.astype("int32"), test_size=eval_fraction, random_state=seed, stratify=labels
    )
