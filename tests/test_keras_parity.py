"""Canonical Keras custom-step patterns, ported onto the Trainer as a user would.

Each test writes the plain-Keras version (a hand-written training loop with
validation; knowledge distillation with a custom loss; a VAE whose custom
`train_step` samples with a `SeedGenerator`) and its Trainer port, runs both
on scikit-learn digits with the same data order, and asserts the same
weights and metric values.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import framework
from framework import losses

from toys import config, max_abs_diff, weights_of

SEED = 0
BATCH = 64


def digits(start, stop):
    d = load_digits()
    return (d.data[start:stop] / 16).astype("float32"), d.target[start:stop].astype("int32")


TRAIN, VALID = digits(0, 600), digits(600, 800)  # 600 / 64: a last batch of 24


def classifier(hidden=32):
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(10)]
    )


def trainer_config(replicas=1, **overrides):
    cfg = config(batch_size=BATCH, seed=SEED, **overrides)
    if replicas > 1:
        cfg.distribution.strategy = "mirrored"
        cfg.distribution.cpu_devices = replicas
    return cfg


class DigitsPort(framework.Trainer):
    """What every port shares: digits in global batches of 64 and Adam."""

    shuffle = False

    def build_optimizer(self):
        return keras.optimizers.Adam(1e-3)

    def build_train_dataset(self, input_context):
        ds = tf.data.Dataset.from_tensor_slices(TRAIN)
        if self.shuffle:
            ds = ds.shuffle(len(TRAIN[0]), seed=SEED, reshuffle_each_iteration=True)
        return ds.batch(input_context.get_per_replica_batch_size(self.config.batch_size))

    def build_eval_dataset(self, input_context):
        per_replica = input_context.get_per_replica_batch_size(self.config.batch_size)
        return tf.data.Dataset.from_tensor_slices(VALID).batch(per_replica)


# ---- 1. A training loop from scratch, with validation ---------------------------------------
# keras.io/guides/writing_a_training_loop_from_scratch (TensorFlow), with a reshuffling dataset.


def keras_training_loop(epochs):
    keras.utils.set_random_seed(SEED)
    model = classifier()
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_acc = keras.metrics.SparseCategoricalAccuracy()
    val_acc = keras.metrics.SparseCategoricalAccuracy()
    train_ds = tf.data.Dataset.from_tensor_slices(TRAIN)
    train_ds = train_ds.shuffle(len(TRAIN[0]), seed=SEED, reshuffle_each_iteration=True).batch(BATCH)
    val_ds = tf.data.Dataset.from_tensor_slices(VALID).batch(BATCH)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss_value = loss_fn(y, logits)
        grads = tape.gradient(loss_value, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        train_acc.update_state(y, logits)
        return loss_value

    @tf.function
    def test_step(x, y):
        val_acc.update_state(y, model(x, training=False))

    history = []
    for _ in range(epochs):
        for x, y in train_ds:
            train_step(x, y)
        for x, y in val_ds:
            test_step(x, y)
        history.append({"accuracy": float(train_acc.result()), "val/accuracy": float(val_acc.result())})
        train_acc.reset_state()
        val_acc.reset_state()
    return model, history


class LoopPort(DigitsPort):
    shuffle = True

    def build_model(self):
        return classifier()

    def build_loss(self):
        return losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_training_loop_with_validation(replicas):
    model, expected = keras_training_loop(epochs=2)
    trainer = LoopPort(trainer_config(replicas, epochs=2))
    history = trainer.fit()
    assert max_abs_diff(weights_of(trainer.model), weights_of(model)) <= 1e-5
    for got, want in zip(history, expected):
        assert got["accuracy"] == want["accuracy"]
        assert got["val/accuracy"] == want["val/accuracy"]


# ---- 2. Knowledge distillation ------------------------------------------------------------
# keras.io/examples/vision/knowledge_distillation (Keras 3): the Distiller overrides compute_loss.

ALPHA, TEMPERATURE = 0.1, 3.0


class Distiller(keras.Model):
    def __init__(self, student, teacher):
        super().__init__()
        self.teacher, self.student = teacher, student

    def compile(self, optimizer, metrics, student_loss_fn, distillation_loss_fn, alpha, temperature):
        super().compile(optimizer=optimizer, metrics=metrics)
        self.student_loss_fn, self.distillation_loss_fn = student_loss_fn, distillation_loss_fn
        self.alpha, self.temperature = alpha, temperature

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, allow_empty=False):
        teacher_pred = self.teacher(x, training=False)
        student_loss = self.student_loss_fn(y, y_pred)
        distillation_loss = self.distillation_loss_fn(
            keras.ops.softmax(teacher_pred / self.temperature, axis=1),
            keras.ops.softmax(y_pred / self.temperature, axis=1),
        ) * (self.temperature**2)
        return self.alpha * student_loss + (1 - self.alpha) * distillation_loss

    def call(self, x):
        return self.student(x)


def trained_teacher():
    keras.utils.set_random_seed(SEED + 1)
    teacher = classifier(hidden=128)
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(*TRAIN, batch_size=BATCH, epochs=3, verbose=0)
    teacher.trainable = False  # else the Distiller's fit trains it too
    return teacher


class DistillationPort(DigitsPort):
    """The teacher comes from outside; the step feeds the loss a head of its own making."""

    def __init__(self, cfg, teacher):
        self.teacher = teacher
        super().__init__(cfg)

    def build_model(self):
        return classifier()

    def build_loss(self):
        student = losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), head="student")
        soft = losses.Term(keras.losses.KLDivergence(), head="soft")
        return ALPHA * student + (1 - ALPHA) * TEMPERATURE**2 * soft

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def train_step(self, batch):
        x, y = batch
        teacher_probs = tf.nn.softmax(self.teacher(x, training=False) / TEMPERATURE)
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            student_probs = tf.nn.softmax(logits / TEMPERATURE)
            loss, logs = self.compute_loss(
                {"student": y, "soft": teacher_probs}, {"student": logits, "soft": student_probs}
            )
        self.apply_gradients(tape, loss)
        self.update_metrics(y, logits)
        return logs


def test_knowledge_distillation():
    teacher = trained_teacher()
    keras.utils.set_random_seed(SEED)
    distiller = Distiller(student=classifier(), teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=ALPHA,
        temperature=TEMPERATURE,
    )
    train_ds = tf.data.Dataset.from_tensor_slices(TRAIN).batch(BATCH)
    fit = distiller.fit(train_ds, epochs=2, verbose=0).history
    val_ds = tf.data.Dataset.from_tensor_slices(VALID).batch(BATCH)
    val = distiller.evaluate(val_ds, verbose=0, return_dict=True)

    trainer = DistillationPort(trainer_config(epochs=2), teacher)
    history = trainer.fit()
    assert max_abs_diff(weights_of(trainer.model), weights_of(distiller.student)) <= 1e-5
    assert history[-1]["accuracy"] == fit["accuracy"][-1]
    assert history[-1]["val/accuracy"] == val["accuracy"]
    assert trainer.evaluate(val_ds)["accuracy"] == val["accuracy"]


# ---- 3. A variational autoencoder ----------------------------------------------------------
# keras.io/examples/generative/vae (Keras 3): a custom train_step, a sampling layer drawing
# from its own SeedGenerator, and a model Keras builds at the first fit.

LATENT = 2


class Sampling(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(keras.ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + keras.ops.exp(0.5 * z_log_var) * epsilon


def vae_parts():
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    z_mean = keras.layers.Dense(LATENT, name="z_mean")(hidden)
    z_log_var = keras.layers.Dense(LATENT, name="z_log_var")(hidden)
    encoder = keras.Model(inputs, [z_mean, z_log_var, Sampling()([z_mean, z_log_var])], name="encoder")
    latent = keras.Input((LATENT,))
    decoded = keras.layers.Dense(64, activation="sigmoid")(keras.layers.Dense(32, activation="relu")(latent))
    return encoder, keras.Model(latent, decoded, name="decoder")


def vae_losses(data, z_mean, z_log_var, reconstruction):
    reconstruction_loss = keras.ops.mean(
        keras.ops.sum(keras.losses.binary_crossentropy(data[..., None], reconstruction[..., None]), axis=1)
    )
    kl_loss = -0.5 * (1 + z_log_var - keras.ops.square(z_mean) - keras.ops.exp(z_log_var))
    kl_loss = keras.ops.mean(keras.ops.sum(kl_loss, axis=1))
    return reconstruction_loss, kl_loss


class VAE(keras.Model):
    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")

    @property
    def metrics(self):
        return [self.total_loss_tracker]

    def call(self, data):
        return self.decoder(self.encoder(data)[2])

    def train_step(self, data):
        with tf.GradientTape() as tape:
            z_mean, z_log_var, z = self.encoder(data)
            reconstruction = self.decoder(z)
            reconstruction_loss, kl_loss = vae_losses(data, z_mean, z_log_var, reconstruction)
            total_loss = reconstruction_loss + kl_loss
        grads = tape.gradient(total_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total_loss_tracker.update_state(total_loss)
        return {"loss": self.total_loss_tracker.result()}


class VAEPort(DigitsPort):
    """The Keras VAE model unchanged; the step moves into the Trainer."""

    def build_model(self):
        encoder, decoder = vae_parts()
        return VAE(encoder, decoder)

    def build_train_dataset(self, input_context):
        return super().build_train_dataset(input_context).map(lambda x, y: x)

    def build_eval_dataset(self, input_context):
        return None

    def train_step(self, data):
        vae = self.model
        with tf.GradientTape() as tape:
            z_mean, z_log_var, z = vae.encoder(data)
            reconstruction = vae.decoder(z)
            reconstruction_loss, kl_loss = vae_losses(data, z_mean, z_log_var, reconstruction)
            total_loss = reconstruction_loss + kl_loss
        self.apply_gradients(tape, total_loss)
        return {"loss": total_loss, "reconstruction_loss": reconstruction_loss, "kl_loss": kl_loss}


def seed_states(model):
    return [np.array(v) for v in model.variables if "seed_generator" in v.path]


def test_a_vae_draws_the_same_random_stream_as_keras_fit():
    keras.utils.set_random_seed(SEED)
    encoder, decoder = vae_parts()
    vae = VAE(encoder, decoder)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vae.fit(tf.data.Dataset.from_tensor_slices(TRAIN[0]).batch(BATCH), epochs=2, verbose=0)

    trainer = VAEPort(trainer_config(epochs=2))
    trainer.fit()
    assert seed_states(vae) and max_abs_diff(seed_states(trainer.model), seed_states(vae)) == 0
    assert max_abs_diff(weights_of(trainer.model), weights_of(vae)) <= 1e-5
