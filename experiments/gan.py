"""A GAN on a ring of 8 Gaussians: a custom train_step with two optimizers.

The generator maps 2-d Gaussian noise to 2-d points; the discriminator
scores points as real or generated. `train_step` is written out: one tape
for the discriminator (real vs generated, updated by its own optimizer,
registered with `add_optimizer`), one for the generator (non-saturating
loss, updated by the trainer's optimizer), both through `compute_loss` and
`apply_gradients` so that every loss is logged (`d_loss/real`,
`d_loss/fake`, `g_loss`) and both updates stay exact under distribution and
float16. `ModesCovered` counts how many of the 8 modes the generated points
cover: a mode is covered when at least `min_share` of the samples fall within
`radius` of its centre (3 standard deviations); `modes/quality` is the share
of samples near any mode. A collapsed generator covers one or two.

python experiments/gan.py --config=configs/gan.py --workdir=runs/gan
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import framework
from common import batches
from framework import losses


def ring_centres(modes: int, radius: float) -> np.ndarray:
    angles = 2 * np.pi * np.arange(modes) / modes
    return (radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)).astype("float32")


def ring_of_gaussians(count: int, centres: np.ndarray, std: float, latent: int, seed: int):
    """(noise [count, latent], real points [count, 2]): equal shares of every mode."""
    rng = np.random.default_rng(seed)
    modes = rng.integers(0, len(centres), count)
    real = centres[modes] + std * rng.normal(size=(count, 2))
    noise = rng.normal(size=(count, latent))
    return noise.astype("float32"), real.astype("float32")


class ModesCovered(keras.metrics.Metric):
    """Modes holding >= `min_share` of the samples within `radius`; logged as modes/covered, modes/quality."""

    def __init__(self, centres: np.ndarray, *, radius: float, min_share: float, name: str = "modes"):
        super().__init__(name=name)
        self.centres = np.asarray(centres, "float32")
        self.radius, self.min_share = float(radius), float(min_share)
        # Samples nearest to each mode and within radius; the last slot: near none.
        self.counts = self.add_variable(
            shape=(len(self.centres) + 1,), initializer="zeros", name="counts", aggregation="sum"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """y_pred: generated points [batch, 2]; y_true is not used."""
        distances = tf.norm(tf.cast(y_pred, tf.float32)[:, None, :] - self.centres[None], axis=-1)
        nearest = tf.argmin(distances, axis=1, output_type=tf.int32)
        slot = tf.where(tf.reduce_min(distances, axis=1) <= self.radius, nearest, len(self.centres))
        self.counts.assign_add(tf.reduce_sum(tf.one_hot(slot, len(self.centres) + 1), axis=0))

    def result(self):
        counts = tf.convert_to_tensor(self.counts)
        shares = tf.math.divide_no_nan(counts, tf.reduce_sum(counts))
        covered = tf.reduce_sum(tf.cast(shares[:-1] >= self.min_share, tf.float32))
        return {"covered": covered, "quality": tf.reduce_sum(shares[:-1])}

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))


def mlp(inputs: int, outputs: int, width: int, depth: int, name: str) -> keras.Model:
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
    layers.append(keras.layers.Dense(outputs, dtype="float32"))
    return keras.Sequential(layers, name=name)


class GanTrainer(framework.Trainer):
    def __init__(self, config, workdir=None, **kwargs):
        data = config.data
        self.centres = ring_centres(data.modes, data.radius)
        self.train_data = ring_of_gaussians(
            data.train_points, self.centres, data.std, data.latent, config.seed
        )
        self.eval_data = ring_of_gaussians(
            data.eval_points, self.centres, data.std, data.latent, config.seed + 1
        )
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        self.d_loss = losses.Term(bce, head="real") + losses.Term(bce, head="fake")
        self.g_loss = losses.Term(bce, name="non_saturating")  # generated points labelled real
        super().__init__(config, workdir, **kwargs)

    def build_model(self):
        """The generator: `trainer.model`, what `--mode=export` exports."""
        cfg = self.config.model
        self.discriminator = mlp(2, 1, cfg.width, cfg.depth, "discriminator")
        return mlp(self.config.data.latent, 2, cfg.width, cfg.depth, "generator")

    def build_optimizer(self):
        opt = self.config.task
        self.d_optimizer = self.add_optimizer(
            keras.optimizers.Adam(opt.d_learning_rate, beta_1=opt.beta_1), self.discriminator, name="d"
        )
        return keras.optimizers.Adam(self.config.optimizer.learning_rate, beta_1=opt.beta_1)  # generator

    def build_metrics(self):
        data = self.config.data
        radius = data.mode_radius_stds * data.std
        return [ModesCovered(self.centres, radius=radius, min_share=data.min_mode_share)]

    def build_train_dataset(self, input_context):
        return batches(self.train_data, input_context, self.config.batch_size, shuffle_seed=self.config.seed)

    def build_eval_dataset(self, input_context):
        return batches(self.eval_data, input_context, self.config.batch_size)

    def _discriminator_loss(self, real, fake, training=True):
        real_scores = self.discriminator(real, training=training)
        fake_scores = self.discriminator(fake, training=training)
        labels = {"real": tf.ones_like(real_scores), "fake": tf.zeros_like(fake_scores)}
        scores = {"real": real_scores, "fake": fake_scores}
        return self.compute_loss(labels, scores, loss=self.d_loss, prefix="d_", model=self.discriminator)

    def _generator_loss(self, fake, training=True):
        scores = self.discriminator(fake, training=training)
        return self.compute_loss(tf.ones_like(scores), scores, loss=self.g_loss, prefix="g_")

    def train_step(self, batch):
        noise, real = batch
        fake = self.model(noise, training=True)  # outside the tape: no gradient to the generator
        with tf.GradientTape() as tape:
            d_loss, d_logs = self._discriminator_loss(real, fake)
        self.apply_gradients(tape, d_loss, optimizer=self.d_optimizer)  # the discriminator's variables
        with tf.GradientTape() as tape:
            fake = self.model(noise, training=True)
            g_loss, g_logs = self._generator_loss(fake)  # against the updated discriminator
        self.apply_gradients(tape, g_loss)  # the trainer's optimizer: the generator's variables
        self.update_metrics(real, fake)
        return {**d_logs, **g_logs}

    def eval_step(self, batch):
        noise, real = batch
        fake = self.model(noise, training=False)
        self.update_metrics(real, fake)
        d_logs = self._discriminator_loss(real, fake, training=False).logs
        return {**d_logs, **self._generator_loss(fake, training=False).logs}


if __name__ == "__main__":
    framework.run(GanTrainer)
