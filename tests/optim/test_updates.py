"""Gradient accumulation, clipping and a two-optimizer step, on 1 and 2 replicas and in float16."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import framework
from framework import losses

from toys import ArrayTrainer, blobs, config, max_abs_diff, mlp, weights_of


def _dist(replicas):
    if replicas == 1:
        return {"distribution.strategy": "one_device"}
    return {"distribution.strategy": "mirrored", "distribution.cpu_devices": replicas}


def _train(data, replicas=1, **cfg):
    trainer = ArrayTrainer(config(**_dist(replicas), **cfg), data=data, model_fn=mlp)
    history = trainer.fit()
    return trainer, history


def test_a_one_device_mirrored_strategy_trains_like_one_device():
    x, y = blobs(n=48)
    reference, _ = _train((x, y))
    strategy = framework.distribute._fresh_collective_keys(tf.distribute.MirroredStrategy)(["/cpu:0"])
    trainer = ArrayTrainer(config(), data=(x, y), model_fn=mlp, strategy=strategy)
    trainer.fit()
    assert max_abs_diff(weights_of(trainer.model), weights_of(reference.model)) <= 1e-6


# ---- accumulation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "replicas, precision, atol",
    [(1, "float32", 1e-6), (2, "float32", 1e-6), (2, "mixed_float16", 2e-4)],
)
def test_accumulating_4_micro_batches_equals_one_step_on_their_concatenation(replicas, precision, atol):
    data = blobs(n=60)
    # Micro-batches of 8 (4 per replica) = 2 updates, against 2 steps on batches of 32. The second
    # window ends with a short micro-batch (8, 8, 8, 4), weighed by its examples: still exact.
    accumulated, history = _train(data, replicas, batch_size=8, grad_accum_steps=4, precision=precision)
    concatenated, _ = _train(data, replicas, batch_size=32, precision=precision)
    assert accumulated.step == 8 and int(accumulated.optimizer.iterations.numpy()) == 2
    assert int(concatenated.optimizer.iterations.numpy()) == 2
    initial = weights_of(mlp())
    assert max_abs_diff(weights_of(concatenated.model), initial) > 1e-2  # the updates were not tiny
    assert max_abs_diff(weights_of(accumulated.model), weights_of(concatenated.model)) <= atol
    if precision == "mixed_float16":
        assert history[-1]["loss_scale"] == 2.0**15


def test_keras_gradient_accumulation_is_refused():
    class KerasAccumulation(ArrayTrainer):
        def build_optimizer(self):
            return keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)

    with pytest.raises(ValueError, match=r"gradient_accumulation_steps.*config.grad_accum_steps"):
        KerasAccumulation(config(), data=blobs(), model_fn=mlp)


# ---- clipping ----------------------------------------------------------------------


class _SmallScale(ArrayTrainer):
    def build_optimizer(self):
        # A first scale that does not overflow on these gradients, so the first step is applied.
        return keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5), initial_scale=2.0**8)


def _one_sgd_step(precision="float32", **clip):
    x, y = blobs(n=16)
    x = 10 * x  # gradients far above the clipping bound
    cls = _SmallScale if precision == "mixed_float16" else ArrayTrainer
    trainer = cls(
        config(precision=precision, steps_per_epoch=1, **{"optimizer.learning_rate": 0.5}, **clip),
        data=(x, y),
        model_fn=mlp,
    )
    trainer.fit()
    assert int(trainer.optimizer.iterations.numpy()) == 1
    return [a - b for a, b in zip(weights_of(trainer.model), weights_of(mlp()))]


def _norm(arrays):
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_global_clipnorm_bounds_the_update_of_the_unscaled_gradient(precision):
    lr, bound = 0.5, 0.25
    assert _norm(_one_sgd_step(precision)) > 4 * lr * bound  # clipping will be active
    update = _one_sgd_step(precision, **{"optimizer.global_clipnorm": bound})
    # Clipped to the bound exactly: clipping the still-scaled float16 gradient would give lr*bound/2**8.
    assert _norm(update) == pytest.approx(lr * bound, rel=1e-4)


def test_clipnorm_bounds_each_variables_update():
    lr, bound = 0.5, 0.1
    update = _one_sgd_step(**{"optimizer.clipnorm": bound})
    norms = [_norm([u]) for u in update]
    assert max(norms) == pytest.approx(lr * bound, rel=1e-4)
    assert all(n <= lr * bound * (1 + 1e-4) for n in norms)


def test_clipping_gives_the_same_weights_on_one_and_two_replicas():
    x, y = blobs(n=64)
    data = (4 * x, y)
    one, _ = _train(data, 1, epochs=2, **{"optimizer.global_clipnorm": 0.2})
    two, _ = _train(data, 2, epochs=2, **{"optimizer.global_clipnorm": 0.2})
    unclipped, _ = _train(data, 1, epochs=2)
    assert max_abs_diff(weights_of(one.model), weights_of(unclipped.model)) > 1e-2  # clipping was active
    assert max_abs_diff(weights_of(one.model), weights_of(two.model)) <= 2e-6


def test_clipping_set_on_the_optimizer_is_taken_over():
    class OwnClipping(ArrayTrainer):
        def build_optimizer(self):
            return keras.optimizers.SGD(0.5, global_clipnorm=0.25)

    x, y = blobs(n=16)
    trainer = OwnClipping(config(steps_per_epoch=1), data=(10 * x, y), model_fn=mlp)
    assert trainer.optimizer.global_clipnorm is None  # Keras would clip per replica, before its all-reduce
    trainer.fit()
    update = [a - b for a, b in zip(weights_of(trainer.model), weights_of(mlp()))]
    assert _norm(update) == pytest.approx(0.5 * 0.25, rel=1e-4)


def test_keras_own_clipping_depends_on_the_replica_count():
    """Documents why clipping is taken over: Keras clips each replica's share before all-reducing."""
    x, y = blobs(n=16)
    x = 10 * x
    results = []
    for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"]):
        strategy = framework.distribute._fresh_collective_keys(tf.distribute.MirroredStrategy)(devices)
        with strategy.scope():
            model = mlp()
            optimizer = keras.optimizers.SGD(0.5, global_clipnorm=0.25)
            optimizer.build(model.trainable_variables)
        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

        def step(x, y, model=model, optimizer=optimizer, ce=ce):
            with tf.GradientTape() as tape:
                loss = ce(y, model(x)) / 16.0
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        batches = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        )
        for batch in batches:
            tf.function(lambda b, s=strategy, f=step: s.run(f, args=b))(batch)
        results.append(weights_of(model))
    assert max_abs_diff(*results) > 1e-3


# ---- two optimizers ----------------------------------------------------------------


def gan_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, 2)).astype("float32")
    real = (rng.normal(size=(n, 2)) * 0.5 + [2.0, -1.0]).astype("float32")
    return noise, real


class TinyGan(framework.Trainer):
    """Generator and discriminator, each with its own optimizer, stepped in one train_step."""

    def __init__(self, cfg, **kwargs):
        self.data = gan_data()
        super().__init__(cfg, **kwargs)

    def build_model(self):
        keras.utils.set_random_seed(0)
        self.generator = keras.Sequential(
            [
                keras.Input((2,)),
                keras.layers.Dense(8, activation="tanh"),
                keras.layers.Dense(2, dtype="float32"),
            ]
        )
        self.discriminator = keras.Sequential(
            [
                keras.Input((2,)),
                keras.layers.Dense(8, activation="tanh"),
                keras.layers.Dense(1, dtype="float32"),
            ]
        )
        noise = keras.Input((2,))
        return keras.Model(noise, self.discriminator(self.generator(noise)))

    def build_optimizer(self):
        self.d_optimizer = self.add_optimizer(keras.optimizers.SGD(0.05), self.discriminator, name="d")
        return keras.optimizers.SGD(0.05)

    def build_train_dataset(self, input_context):
        batch = input_context.get_per_replica_batch_size(self.config.batch_size)
        return tf.data.Dataset.from_tensor_slices(self.data).batch(batch)

    def train_step(self, batch):
        noise, real = batch
        bce = losses.Term(keras.losses.BinaryCrossentropy(from_logits=True), name="bce")
        ones, zeros = tf.ones_like(real[:, :1]), tf.zeros_like(real[:, :1])
        with tf.GradientTape() as tape:
            scores = self.discriminator(tf.concat([real, self.generator(noise)], 0), training=True)
            d_loss, d_logs = self.compute_loss(tf.concat([ones, zeros], 0), scores, loss=bce, prefix="d_")
        self.apply_gradients(tape, d_loss, self.discriminator.trainable_variables, self.d_optimizer)
        with tf.GradientTape() as tape:
            scores = self.discriminator(self.generator(noise, training=True))
            g_loss, g_logs = self.compute_loss(ones, scores, loss=bce, prefix="g_")
        self.apply_gradients(tape, g_loss, self.generator.trainable_variables)
        return {**d_logs, **g_logs}


def _gan(replicas, precision="float32"):
    trainer = TinyGan(config(**_dist(replicas), epochs=2, precision=precision))
    history = trainer.fit()
    return trainer, history


@pytest.fixture(scope="module")
def gan_on_one_device():
    return _gan(1)[0]


def test_two_optimizers_in_one_step_match_on_one_and_two_replicas(gan_on_one_device):
    one, (two, _) = gan_on_one_device, _gan(2)
    assert int(one.d_optimizer.iterations.numpy()) == int(one.optimizer.iterations.numpy()) == 8
    assert max_abs_diff(weights_of(one.model), weights_of(two.model)) <= 2e-6
    assert max_abs_diff(weights_of(one.model), weights_of(TinyGan(config()).model)) > 1e-3


def test_two_optimizers_in_float16_scale_separately_and_train(gan_on_one_device):
    two, history = _gan(2, "mixed_float16")
    assert isinstance(two.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert history[-1]["loss_scale"] == history[-1]["loss_scale/d"] == 2.0**15
    assert int(two.d_optimizer.iterations.numpy()) == int(two.optimizer.iterations.numpy()) == 8
    assert all(np.all(np.isfinite(w)) for w in weights_of(two.model))
    # float16 on 2 replicas follows float32 on one device closely.
    assert max_abs_diff(weights_of(gan_on_one_device.model), weights_of(two.model)) <= 5e-3


def test_an_unregistered_optimizer_is_named():
    class Stray(TinyGan):
        def build_optimizer(self):
            with self.strategy.scope():
                self.d_optimizer = keras.optimizers.SGD(0.05, name="stray")
            return keras.optimizers.SGD(0.05)

    trainer = Stray(config())
    with pytest.raises(ValueError, match=r"optimizer='stray'.*self.add_optimizer"):
        trainer.fit()


def test_an_optimizer_made_outside_the_strategy_scope_is_refused():
    outside = keras.optimizers.SGD(0.05, name="outside")

    class Outside(TinyGan):
        def build_optimizer(self):
            self.d_optimizer = self.add_optimizer(outside, self.discriminator)
            return keras.optimizers.SGD(0.05)

    with pytest.raises(ValueError, match=r"'outside' was created outside the trainer's strategy scope"):
        Outside(config(**_dist(2)))


def test_a_second_optimizers_learning_rate_is_logged():
    import framework
    from framework import losses

    class Two(framework.Trainer):
        def build_model(self):
            return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])

        def build_optimizer(self):
            self.second = self.add_optimizer(keras.optimizers.SGD(0.5), lambda: self.model.layers[1].trainable_variables,
                                             name="head")  # fmt: skip
            return keras.optimizers.SGD(0.1)

        def build_loss(self):
            return losses.Term(keras.losses.MeanSquaredError())

        def train_step(self, batch):
            x, y = batch
            with tf.GradientTape(persistent=True) as tape:
                loss, logs = self.compute_loss(y, self.model(x, training=True))
            self.apply_gradients(tape, loss, variables=self.model.layers[0].trainable_variables)
            self.apply_gradients(tape, loss, optimizer=self.second)
            return logs

        def build_train_dataset(self, ctx):
            x = np.ones((8, 3), "float32")
            return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(4)

    history = Two({"epochs": 1}).fit()
    assert history[0]["lr"] == pytest.approx(0.1) and history[0]["lr/head"] == pytest.approx(0.5)
