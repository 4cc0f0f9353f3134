"""Main-thread CPU time of a first fit() of one WGAN-GP step (tracing, graph optimization, the step).

    python scripts/trace_time_wgan_gp.py framework   # framework.Trainer (tests/wgan_gp.py)
    python scripts/trace_time_wgan_gp.py keras       # the same step in a keras.Model under fit()

time.thread_time: TensorFlow's pool threads spin under CPU contention, which
inflates process_time on a shared machine.
"""

import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

# This checkout's framework, not the one the environment has installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from wgan_gp import WganGpTrainer, _mlp, get_config

which = sys.argv[1]
cfg = get_config()
cfg.epochs = 1
cfg.data.examples = 32
cfg.steps_per_execution = 1
if which == "framework":
    t = WganGpTrainer(cfg)
    start = time.thread_time()
    t.fit()
    print("framework", round(time.thread_time() - start, 2))
else:
    keras.utils.set_random_seed(3)

    class Wgan(keras.Model):
        def __init__(self):
            super().__init__()
            self.gen = _mlp(4, 2, 32, "generator", True)
            self.critic = _mlp(2, 1, 32, "critic", True)
            self.noise = keras.random.SeedGenerator(4)
            self.c_opt = keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9)
            self.g_opt = keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9)

        def call(self, z):
            return self.gen(z)

        def train_step(self, real):
            batch = tf.shape(real)[0]
            for _ in range(3):
                fake = self.gen(keras.random.normal((batch, 4), seed=self.noise), training=True)
                with tf.GradientTape() as tape:
                    c = tf.reduce_mean(self.critic(fake, training=True)) - tf.reduce_mean(
                        self.critic(real, training=True)
                    )
                    alpha = keras.random.uniform((batch, 1), seed=self.noise)
                    mixed = real + alpha * (fake - real)
                    with tf.GradientTape() as inner:
                        inner.watch(mixed)
                        s = self.critic(mixed, training=True)
                    g = inner.gradient(s, mixed)
                    gp = tf.reduce_mean(tf.square(tf.norm(g, axis=1) - 1.0))
                    total = c + 10.0 * gp
                grads = tape.gradient(total, self.critic.trainable_variables)
                self.c_opt.apply_gradients(zip(grads, self.critic.trainable_variables))
            with tf.GradientTape() as tape:
                s = self.critic(
                    self.gen(keras.random.normal((batch, 4), seed=self.noise), training=True), training=True
                )
                gl = -tf.reduce_mean(s)
            grads = tape.gradient(gl, self.gen.trainable_variables)
            self.g_opt.apply_gradients(zip(grads, self.gen.trainable_variables))
            return {"c": c, "gp": gp, "g": gl}

    m = Wgan()
    m.compile(steps_per_execution=1)
    x = np.random.default_rng(0).normal(size=(32, 2)).astype("f")
    start = time.thread_time()
    m.fit(x, batch_size=32, epochs=1, verbose=0)
    print("keras", round(time.thread_time() - start, 2))
