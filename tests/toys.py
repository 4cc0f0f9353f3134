"""Small trainers and data shared by the tests."""

import socket

import keras
import numpy as np
import tensorflow as tf

import framework
from framework import losses


def blobs(n=96, features=6, classes=3, seed=0):
    """Separable-ish float32 features with int32 labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (classes, features))
    y = rng.integers(0, classes, n).astype("int32")
    x = (centers[y] + rng.normal(0, 1, (n, features))).astype("float32")
    return x, y


def mlp(features=6, classes=3, hidden=16, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((features,)), keras.layers.Dense(hidden, activation="tanh"), keras.layers.Dense(classes)]
    )


def config(**overrides):
    c = framework.config.defaults()
    c.batch_size = 16
    c.epochs = 1
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.steps_per_execution = 4
    c.checkpoint.min_interval_secs = 0  # tests check the saves of epochs a few ms long
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


class ArrayTrainer(framework.Trainer):
    """A trainer over in-memory arrays; model, loss and metrics are injected."""

    def __init__(
        self,
        cfg,
        *,
        data,
        model_fn,
        loss=None,
        metrics=None,
        eval_data=None,
        shuffle=False,
        workdir=None,
        **kwargs,
    ):
        self.data, self.eval_data = data, eval_data
        self.model_fn, self._loss, self._metrics = model_fn, loss, metrics
        self.shuffle = shuffle
        super().__init__(cfg, workdir, **kwargs)

    def build_model(self):
        return self.model_fn()

    def build_loss(self):
        if self._loss is None:
            return losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")
        return self._loss

    def build_metrics(self):
        return self._metrics() if self._metrics else []

    def _dataset(self, arrays, ctx, shuffle):
        ds = tf.data.Dataset.from_tensor_slices(arrays)
        if shuffle:
            ds = ds.shuffle(1000, seed=self.config.seed, reshuffle_each_iteration=True)
        return ds.batch(ctx.get_per_replica_batch_size(self.config.batch_size))

    def build_train_dataset(self, input_context):
        return self._dataset(self.data, input_context, self.shuffle)

    def build_eval_dataset(self, input_context):
        return None if self.eval_data is None else self._dataset(self.eval_data, input_context, False)


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


class ExampleCount(keras.metrics.Metric):
    """Counts the examples it has seen since its last reset."""

    def __init__(self, name="count"):
        super().__init__(name=name)
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.count.assign_add(tf.cast(tf.shape(y_true)[0], "float32"))

    def result(self):
        return self.count


def free_ports(count):
    """`count` distinct ports free on 127.0.0.1 right now (for worker processes)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
