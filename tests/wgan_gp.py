"""A WGAN-GP trainer for grouping tests: 3 critic updates per generator update, a gradient penalty, BatchNorm.

    python tests/wgan_gp.py --config=tests/wgan_gp.py --workdir=/tmp/w

The same file is its own config (`get_config`). After `fit()` the chief
writes the final weights (generator, then critic) to `workdir/weights.npz`.
"""

import os
import signal

import keras
import numpy as np
import tensorflow as tf

import framework
from framework import losses


def get_config(arg=None):
    config = framework.config.defaults()
    config.seed = 3
    config.deterministic = True
    config.batch_size = 32
    config.epochs = 2
    config.steps_per_execution = 4
    config.log_every_steps = 7
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.data.examples = 32 * 14
    config.data.latent = 4
    config.model.width = 32
    config.task.critic_steps = 3
    config.task.penalty = 10.0
    config.task.sigterm_after_step = 0  # > 0: the process sends itself SIGTERM after this step
    return config


class _SigtermAfter(keras.callbacks.Callback):
    def __init__(self, trainer, step):
        super().__init__()
        self.trainer, self.step, self.sent = trainer, step, False

    def on_train_batch_end(self, batch, logs=None):
        if self.trainer.step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def _mlp(inputs, outputs, width, name, batch_norm):
    layers = [keras.Input((inputs,))]
    for _ in range(2):
        layers.append(keras.layers.Dense(width))
        if batch_norm:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.LeakyReLU(0.2))
    layers.append(keras.layers.Dense(outputs))
    return keras.Sequential(layers, name=name)


def _score(values):
    return values[:, 0]


class WganGpTrainer(framework.Trainer):
    def __init__(self, config, workdir=None, **kwargs):
        self.noise = keras.random.SeedGenerator(config.seed + 1)
        fake = losses.PredictionTerm(_score, head="fake", name="fake")
        self.critic_loss = fake + -1.0 * losses.PredictionTerm(_score, head="real", name="real")
        self.penalty_loss = config.task.penalty * losses.PredictionTerm(_score, name="penalty")
        self.generator_loss = -1.0 * losses.PredictionTerm(_score, name="score")
        super().__init__(config, workdir, **kwargs)

    def build_model(self):
        cfg = self.config
        self.critic = _mlp(2, 1, cfg.model.width, "critic", batch_norm=True)
        return _mlp(cfg.data.latent, 2, cfg.model.width, "generator", batch_norm=True)

    def build_optimizer(self):
        self.critic_optimizer = self.add_optimizer(
            keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9), self.critic, name="critic"
        )
        return keras.optimizers.Adam(self.config.optimizer.learning_rate, beta_1=0.5, beta_2=0.9)

    def build_callbacks(self):
        step = self.config.task.sigterm_after_step
        return [_SigtermAfter(self, step)] if step else []

    def build_train_dataset(self, input_context):
        n = self.config.data.examples
        rng = np.random.default_rng(0)
        angle = rng.uniform(0, 2 * np.pi, n)
        points = np.stack([np.cos(angle), np.sin(angle)], 1) + 0.05 * rng.normal(size=(n, 2))
        ds = tf.data.Dataset.from_tensor_slices(points.astype("float32"))
        ds = ds.shuffle(n, seed=1, reshuffle_each_iteration=True)
        return ds.batch(input_context.get_per_replica_batch_size(self.config.batch_size), drop_remainder=True)

    def _latent(self, batch):
        return keras.random.normal((batch, self.config.data.latent), seed=self.noise)

    def _penalty(self, real, fake):
        alpha = keras.random.uniform((tf.shape(real)[0], 1), seed=self.noise)
        mixed = real + alpha * (fake - real)
        with tf.GradientTape() as inner:
            inner.watch(mixed)
            scores = self.critic(mixed, training=True)
        grads = inner.gradient(scores, mixed)
        return tf.square(tf.norm(grads, axis=1, keepdims=True) - 1.0)

    def train_step(self, real):
        batch = tf.shape(real)[0]
        logs = {}
        for _ in range(self.config.task.critic_steps):
            fake = self.model(self._latent(batch), training=True)
            with tf.GradientTape() as tape:
                scores = {"real": self.critic(real, training=True), "fake": self.critic(fake, training=True)}
                critic, logs_c = self.compute_loss(None, scores, loss=self.critic_loss, prefix="c_")
                penalty, logs_p = self.compute_loss(
                    None, self._penalty(real, fake), loss=self.penalty_loss, prefix="gp_"
                )
                total = critic + penalty
            self.apply_gradients(tape, total, optimizer=self.critic_optimizer)
            logs = {**logs_c, **logs_p}
        with tf.GradientTape() as tape:
            scores = self.critic(self.model(self._latent(batch), training=True), training=True)
            generator, logs_g = self.compute_loss(None, scores, loss=self.generator_loss, prefix="g_")
        self.apply_gradients(tape, generator)
        return {**logs, **logs_g}

    def weights(self):
        return [np.array(w) for w in self.model.get_weights() + self.critic.get_weights()]

    def fit(self, **kwargs):
        history = super().fit(**kwargs)
        if self.is_chief and self.workdir:
            np.savez(os.path.join(self.workdir, "weights.npz"), *self.weights())
        return history


if __name__ == "__main__":
    framework.run(WganGpTrainer)
