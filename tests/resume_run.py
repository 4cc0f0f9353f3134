"""A research script for fault-injection tests: shuffled data, Dropout, frequent checkpoints.

    python tests/resume_run.py --config=tests/resume_run.py --workdir=/tmp/r

The same file is its own config (`get_config`). After `fit()` the chief
writes the final weights to `workdir/weights.npz`.
"""

import os

import keras
import numpy as np
import tensorflow as tf

import framework
from framework import losses


def get_config(arg=None):
    config = framework.config.defaults()
    config.checkpoint.min_interval_secs = 0  # every due save: the tests resume from them
    config.seed = 7
    config.deterministic = True
    config.batch_size = 16
    config.epochs = 4
    config.steps_per_execution = 4
    config.log_every_steps = 8
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.checkpoint.every_steps = 20
    config.checkpoint.max_to_keep = 50
    config.data.examples = 1600  # 400 steps: room for three kills and a SIGTERM
    return config


class ResumeTrainer(framework.Trainer):
    def build_model(self):
        return keras.Sequential(
            [
                keras.Input((16,)),
                keras.layers.Dense(256, activation="relu"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(256, activation="relu"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(4),
            ]
        )

    def build_loss(self):
        return losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def _data(self, n, seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 16)).astype("float32")
        return tf.data.Dataset.from_tensor_slices((x, np.argmax(x[:, :4], axis=1).astype("int32")))

    def build_train_dataset(self, input_context):
        n = self.config.data.examples
        ds = self._data(n, 0).shuffle(n, seed=1, reshuffle_each_iteration=True)
        return ds.batch(input_context.get_per_replica_batch_size(self.config.batch_size))

    def build_eval_dataset(self, input_context):
        return self._data(256, 1).batch(input_context.get_per_replica_batch_size(64))

    def fit(self, **kwargs):
        history = super().fit(**kwargs)
        if self.is_chief:
            np.savez(os.path.join(self.workdir, "weights.npz"), *self.model.get_weights())
        return history


if __name__ == "__main__":
    framework.run(ResumeTrainer)
