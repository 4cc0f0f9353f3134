"""A small research script for the two-worker test (tests/distribute/test_distribute.py).

Every worker runs the same command, with its own TF_CONFIG:

    python tests/multiworker_script.py --config=tests/multiworker_script.py \
        --workdir=/tmp/mw --config.distribution.strategy=multi_worker --weights_out=/tmp/w0.npz

The file is its own config (`get_config`). Data come from
`framework.distribute.global_batches`, so one device and two workers train on
the same global batches; each process saves its final weights to
`--weights_out`, a path of its own.
"""

import keras
import numpy as np
import tensorflow as tf
from absl import flags

import framework
from framework import distribute, losses

if "weights_out" not in flags.FLAGS:  # this file is also loaded as the config module
    flags.DEFINE_string("weights_out", None, "Where this process saves its final weights (.npz).")


def get_config(arg=None):
    config = framework.config.defaults()
    config.checkpoint.min_interval_secs = 0  # every due save: the tests resume from them
    config.batch_size = 16
    config.epochs = 2
    config.steps_per_execution = 2
    config.log_every_steps = 2
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 0.01
    config.distribution.strategy = "one_device"
    return config


def blobs(n=80, features=6, classes=3):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, (classes, features))
    y = rng.integers(0, classes, n).astype("int32")
    return (centers[y] + rng.normal(0, 1, (n, features))).astype("float32"), y


class BlobsTrainer(framework.Trainer):
    def build_model(self):
        return keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3)]
        )

    def build_loss(self):
        ce = losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")
        return ce + losses.L2(1e-3)

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def build_train_dataset(self, input_context):
        dataset = tf.data.Dataset.from_tensor_slices(blobs())
        dataset = dataset.shuffle(80, seed=self.config.seed, reshuffle_each_iteration=True)
        return distribute.global_batches(dataset, input_context, self.config.batch_size)

    def fit(self, **kwargs):
        history = super().fit(**kwargs)
        if flags.FLAGS.is_parsed() and flags.FLAGS.weights_out:
            np.savez(flags.FLAGS.weights_out, *self.model.get_weights())
        return history


if __name__ == "__main__":
    framework.run(BlobsTrainer)
