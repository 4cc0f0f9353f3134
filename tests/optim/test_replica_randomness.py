"""Every replica draws its own random numbers; replica 0 draws what one device draws.

On 2 mirrored logical CPUs, a Dropout layer in the model and a
`keras.random.SeedGenerator` the trainer holds (noise in a custom step) record
what each replica drew in a variable with aggregation "none", which each
replica writes on its own copy; `strategy.experimental_local_results` reads
the copies. Oracles: a plain Keras model (or `keras.random.normal`) with the
same seed, called outside the framework on one replica's batch shape, for
replica 0; independence statistics (Bernoulli(0.7) masks agree on 0.58 of
their entries, not all) for replica 1.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from toys import ArrayTrainer, config, weights_of

RATE = 0.3
ROWS, FEATURES = 64, 32  # per replica
REPLICAS = 2


class Recorder(keras.layers.Layer):
    """Passes x through; in training, keeps the replica's last x in a variable of its own copy."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        self.seen = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, aggregation="none", name="seen"
        )

    def call(self, x, training=False):
        if training:
            self.seen.assign(x)
        return x


def dropout_model(rows=ROWS):
    """The Dropout mask of ones, recorded, multiplies the input: the output reveals the mask."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    mask = keras.layers.Dropout(RATE, name="dropout")(keras.ops.ones_like(inputs))
    mask = Recorder((rows, FEATURES), name="recorder")(mask)
    return keras.Model(inputs, keras.layers.Dense(3)(inputs * mask))


def data(n):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, FEATURES)).astype("float32"), rng.integers(0, 3, n).astype("int32")


def mirrored(**overrides):
    return config(
        batch_size=ROWS * REPLICAS,
        **{"distribution.strategy": "mirrored", "distribution.cpu_devices": REPLICAS, **overrides},
    )


def per_replica(trainer, variable):
    return [np.array(v) for v in trainer.strategy.experimental_local_results(variable.value)]


def plain_keras_masks(steps, jit_compile=False):
    """What one replica's Dropout draws at steps 1..`steps`, by a Keras model outside the framework.

    XLA's kernels of TensorFlow's stateless random ops draw other numbers from
    the same seed than the graph kernels, so an XLA-compiled call is its own oracle.
    """
    model = dropout_model()
    call = tf.function(lambda x: model(x, training=True), jit_compile=jit_compile)
    x = tf.ones((ROWS, FEATURES))
    masks = []
    for _ in range(steps):
        call(x)
        masks.append(np.array(model.get_layer("recorder").seen))
    return masks


def assert_independent_bernoulli(a, b, keep):
    """Two 0/1 masks each keep ~`keep`, and agree as often as independent draws do."""
    for mask in (a, b):
        assert abs(mask.mean() - keep) < 0.04, mask.mean()
    agreement = np.mean(a == b)
    assert abs(agreement - (keep**2 + (1 - keep) ** 2)) < 0.04, agreement  # identical masks: 1.0


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla_forward"])
def test_replicas_draw_their_own_dropout_masks_and_replica_0_the_one_replica_masks(jit_compile):
    steps = 3
    cfg = mirrored(epochs=0, train_steps=steps, steps_per_execution=steps, jit_compile=jit_compile)
    trainer = ArrayTrainer(cfg, data=data(ROWS * REPLICAS * steps), model_fn=dropout_model)
    trainer.fit(validate=False)
    masks = [m > 0 for m in per_replica(trainer, trainer.model.get_layer("recorder").seen)]
    np.testing.assert_array_equal(masks[0], plain_keras_masks(steps, jit_compile)[-1] > 0)
    assert_independent_bernoulli(masks[0], masks[1], keep=1 - RATE)
    # Every replica advanced the generator's state the same: the mirrored copies agree.
    states = per_replica(trainer, trainer.model.get_layer("dropout").seed_generator.state)
    np.testing.assert_array_equal(states[0], states[1])
    assert states[0][1] == steps


class NoisyStep(ArrayTrainer):
    """A custom train_step adding noise from the trainer's own SeedGenerator (the README's recipe)."""

    def build_model(self):
        self.noise = keras.random.SeedGenerator(self.config.seed)
        self.drawn = keras.Variable(
            np.zeros((ROWS, FEATURES), "float32"), trainable=False, aggregation="none", name="drawn"
        )
        return super().build_model()

    def train_step(self, batch):
        x, y = batch
        noise = keras.random.normal(keras.ops.shape(x), seed=self.noise)
        self.drawn.assign(noise)
        with tf.GradientTape() as tape:
            loss, logs = self.compute_loss(y, self.model(x + noise, training=True))
        self.apply_gradients(tape, loss)
        return logs


def test_a_trainers_seed_generator_gives_each_replica_its_own_noise_in_a_custom_step():
    steps = 2
    cfg = mirrored(epochs=0, train_steps=steps, steps_per_execution=1, seed=11)
    model_fn = lambda: keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(3)])  # noqa: E731
    trainer = NoisyStep(cfg, data=data(ROWS * REPLICAS * steps), model_fn=model_fn)
    trainer.fit(validate=False)
    drawn = per_replica(trainer, trainer.drawn)
    oracle = keras.random.SeedGenerator(11)
    for _ in range(steps):
        want = np.array(keras.random.normal((ROWS, FEATURES), seed=oracle))
    np.testing.assert_array_equal(drawn[0], want)
    for noise in drawn:
        assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1
    assert abs(np.corrcoef(drawn[0].ravel(), drawn[1].ravel())[0, 1]) < 0.1  # the same noise: 1.0


def dropout_trainer(workdir=None, **overrides):
    def model_fn():
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [keras.Input((FEATURES,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dropout(RATE),
             keras.layers.Dense(3)]
        )  # fmt: skip

    cfg = mirrored(deterministic=True, steps_per_execution=2, **{"optimizer.name": "adam", **overrides})
    workdir = None if workdir is None else str(workdir)
    return ArrayTrainer(cfg, data=data(ROWS * REPLICAS * 3), model_fn=model_fn, shuffle=True, workdir=workdir)


def test_a_dropout_model_on_two_replicas_reruns_and_resumes_bitwise(tmp_path):
    straight = dropout_trainer(tmp_path / "straight", epochs=0, train_steps=8)
    straight.fit(validate=False)
    again = dropout_trainer(epochs=0, train_steps=8)
    again.fit(validate=False)
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(straight.model), weights_of(again.model)))
    # Stopped after 5 steps (mid-epoch: 3 steps an epoch), then resumed to 8 from the checkpoint.
    dropout_trainer(tmp_path / "split", epochs=0, train_steps=5).fit(validate=False)
    resumed = dropout_trainer(tmp_path / "split", epochs=0, train_steps=8)
    resumed.fit(validate=False)
    assert resumed.step == straight.step == 8
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(straight.model), weights_of(resumed.model)))
