"""Digit classification: the default experiment and the smallest full example.

python experiments/digits.py --config=configs/digits.py --workdir=runs/digits
"""

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import framework
from framework import losses


def digits_split(eval_fraction: float, seed: int):
    """Scikit-learn's 1,797 8x8 digits, scaled to [0, 1], split stratified."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype("float32")
    return train_test_split(
        images, labels.astype("int32"), test_size=eval_fraction, random_state=seed, stratify=labels
    )


class DigitsTrainer(framework.Trainer):
    def __init__(self, config, workdir=None, **kwargs):
        self.data = digits_split(config.data.eval_fraction, config.seed)
        super().__init__(config, workdir, **kwargs)

    def build_model(self):
        cfg = self.config.model
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(cfg.hidden, activation="relu"),
                keras.layers.Dropout(cfg.dropout),
                keras.layers.Dense(10, dtype="float32"),  # logits in float32 under mixed precision
            ],
            name="digits_mlp",
        )

    def build_loss(self):
        ce = losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")
        return ce + losses.L2(self.config.task.l2)

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def _dataset(self, x, y, input_context, *, train):
        batch = input_context.get_per_replica_batch_size(self.config.batch_size)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if train:
            ds = ds.shuffle(len(x), seed=self.config.seed, reshuffle_each_iteration=True)
        return ds.batch(batch).prefetch(tf.data.AUTOTUNE)

    def build_train_dataset(self, input_context):
        x_train, _, y_train, _ = self.data
        return self._dataset(x_train, y_train, input_context, train=True)

    def build_eval_dataset(self, input_context):
        _, x_eval, _, y_eval = self.data
        return self._dataset(x_eval, y_eval, input_context, train=False)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    framework.run(DigitsTrainer)
