"""config.jit_compile: the same weights with and without XLA; a fallback, never a crash."""

import logging

import keras
import pytest
import tensorflow as tf

from toys import ArrayTrainer, blobs, config, max_abs_diff, mlp, weights_of


def xla_functions(fn) -> int:
    """How many functions in a tf.function's graph must be compiled by XLA."""
    fn = getattr(fn, "function", fn)  # framework.loop.step_function.StepFunction wraps the tf.function
    concrete = fn.get_concrete_function() if not fn._list_all_concrete_functions() else None
    concrete = concrete or fn._list_all_concrete_functions()[0]
    library = concrete.graph.as_graph_def().library.function
    return sum(1 for f in library if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b)


VARIABLE_UPDATES = {"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp"}


def xla_compiled_ops(fn) -> set[str]:
    """The op types XLA compiles in a tf.function's graph, functions they call included."""
    fn = getattr(fn, "function", fn)
    library = {
        f.signature.name: f
        for f in fn._list_all_concrete_functions()[0].graph.as_graph_def().library.function
    }

    def ops(name, seen):
        if name in seen or name not in library:
            return set()
        seen.add(name)
        found = set()
        for node in library[name].node_def:
            found |= {node.op} | ops(node.op, seen)
            for attr in node.attr.values():
                found |= ops(attr.func.name, seen) if attr.func.name else set()
        return found

    compiled = [n for n, f in library.items() if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]
    return set().union(*(ops(name, set()) for name in compiled))


def _dist(replicas):
    if replicas == 1:
        return {"distribution.strategy": "one_device"}
    return {"distribution.strategy": "mirrored", "distribution.cpu_devices": replicas}


@pytest.mark.parametrize("replicas, compiled", [(1, "step"), (2, "forward")])
def test_xla_on_and_off_reach_the_same_weights(replicas, compiled):
    x, y = blobs(n=64)
    ex, ey = blobs(n=32, seed=1)
    results = {}
    for jit in (False, True):
        trainer = ArrayTrainer(
            config(epochs=2, jit_compile=jit, **_dist(replicas)),
            data=(x, y),
            eval_data=(ex, ey),
            model_fn=mlp,
        )
        history = trainer.fit()
        results[jit] = trainer, history
        assert (xla_functions(trainer.controller.train_fn) > 0) == jit
        if jit:  # "step": the update is compiled too; "forward": the model's forward and backward only
            assert bool(xla_compiled_ops(trainer.controller.train_fn) & VARIABLE_UPDATES) == (
                compiled == "step"
            )
    (plain, h0), (xla, h1) = results[False], results[True]
    assert max_abs_diff(weights_of(plain.model), weights_of(xla.model)) <= 1e-5
    assert h1[-1]["loss"] == pytest.approx(h0[-1]["loss"], abs=1e-5)
    assert h1[-1]["val/loss"] == pytest.approx(h0[-1]["val/loss"], abs=1e-5)


class CustomStep(ArrayTrainer):
    def train_step(self, batch):
        x, y = batch
        with tf.GradientTape() as tape:
            loss, logs = self.compute_loss(y, self.model(x, training=True))
        self.apply_gradients(tape, loss)
        return logs


def test_custom_step_on_two_replicas_runs_without_xla_and_warns(caplog):
    x, y = blobs(n=64)
    dist = _dist(2)
    with caplog.at_level(logging.WARNING):
        trainer = CustomStep(config(jit_compile=True, **dist), data=(x, y), model_fn=mlp)
        trainer.fit()
    assert "train_step is overridden and runs on 2 replicas" in caplog.text
    assert xla_functions(trainer.controller.train_fn) == 0
    assert trainer.step == 4 and int(trainer.optimizer.iterations.numpy()) == 4


class CountingLayer(keras.layers.Layer):
    """Counts examples in a variable summed across replicas: its call needs a merge_call."""

    def build(self, input_shape):
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, aggregation="sum")

    def call(self, x, training=False):
        if training:
            self.seen.assign_add(tf.cast(tf.shape(x)[0], self.seen.dtype))
        return x


def test_a_forward_pass_that_synchronizes_replicas_falls_back_with_a_warning(caplog):
    def model_fn():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((6,)), CountingLayer(), keras.layers.Dense(3)])

    runs = []
    for jit in (True, False):
        with caplog.at_level(logging.WARNING):
            trainer = ArrayTrainer(config(jit_compile=jit, **_dist(2)), data=blobs(n=32), model_fn=model_fn)
            trainer.fit()
        runs.append(trainer)
        assert ("cannot be XLA-compiled; it runs without XLA" in caplog.text) == jit
        caplog.clear()
    assert max_abs_diff(weights_of(runs[0].model), weights_of(runs[1].model)) <= 1e-6
    assert float(runs[0].model.layers[0].seen.numpy()) == float(runs[1].model.layers[0].seen.numpy()) > 0
