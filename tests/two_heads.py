"""A two-headed research trainer (a class and a value per example) for the after-training tests.

    python tests/two_heads.py --config=tests/two_heads.py --workdir=/tmp/r

The same file is its own config (`get_config`).
"""

import keras
import numpy as np
import tensorflow as tf

import framework
from framework import losses

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def get_config(arg=None):
    config = framework.config.defaults()
    config.checkpoint.min_interval_secs = 0  # every epoch's save: the tests restore earlier steps
    config.seed = 3
    config.batch_size = 16
    config.epochs = 4
    config.steps_per_execution = 3
    config.log_every_steps = 6
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.model.hidden = 16
    config.data.train = 96
    config.data.eval = 40
    return config


def examples(n, seed):
    """Features, a class (3 blobs) and a value per example; every split shares the blobs' centers."""
    centers = np.random.default_rng(0).normal(0, 2, (3, 6))
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, n).astype("int32")
    x = (centers[cls] + rng.normal(0, 1, (n, 6))).astype("float32")
    reg = (x @ np.linspace(-1, 1, 6) + rng.normal(0, 0.3, n)).astype("float32")[:, None]
    return x, {"cls": cls, "reg": reg}


def keras_model(hidden, seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,))
    h = keras.layers.Dense(hidden, activation="tanh")(x)
    return keras.Model(x, {"cls": keras.layers.Dense(3)(h), "reg": keras.layers.Dense(1)(h)})


class TwoHeads(framework.Trainer):
    """with_eval=False: no build_eval_dataset (training data only)."""

    def __init__(self, *args, with_eval=True, **kwargs):
        self.with_eval = with_eval
        super().__init__(*args, **kwargs)

    def build_model(self):
        return keras_model(self.config.model.hidden, self.config.seed)

    def build_loss(self):
        return losses.Term(CE, head="cls", name="ce") + losses.Term(
            keras.losses.MeanSquaredError(), head="reg"
        )

    def build_metrics(self):
        return {
            "cls": [keras.metrics.SparseCategoricalAccuracy(name="acc")],
            "reg": [keras.metrics.MeanAbsoluteError(name="mae")],
        }

    def build_train_dataset(self, input_context):
        ds = tf.data.Dataset.from_tensor_slices(examples(self.config.data.train, seed=1))
        ds = ds.shuffle(1000, seed=self.config.seed)
        return ds.batch(input_context.get_per_replica_batch_size(self.config.batch_size))

    def build_eval_dataset(self, input_context):
        if not self.with_eval:
            return None
        ds = tf.data.Dataset.from_tensor_slices(examples(self.config.data.eval, seed=2))
        return ds.batch(input_context.get_per_replica_batch_size(self.config.batch_size))


if __name__ == "__main__":
    framework.run(TwoHeads)
