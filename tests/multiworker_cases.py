"""Runs training cases in one process, one after another; the multi-worker tests' worker script.

Every worker of a cluster runs the same command with its own TF_CONFIG; a
reference process runs it with `--strategy=one_device`:

    python tests/multiworker_cases.py --strategy=multi_worker --root=/tmp/mw \
        --cases=metrics,heads --out=/tmp/mw/result-0.json

Case `c` trains in `<root>/<c>` (a workdir shared by the workers, as on a
shared filesystem; `c@tag` is case `c` in `<root>/c-tag`) and the process writes, per case, its final weights, the
history `fit()` returned, the step and the learning rate to `--out`. Data come
from `framework.distribute.global_batches`: one process and two workers train
on the same global batches. One strategy serves every case of a process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "experiments")]

from timeouts import seconds  # noqa: E402  (tests/ is on sys.path: this script's folder)

import framework  # noqa: E402
from framework import distribute, losses  # noqa: E402
from framework.metrics import RecallAtK  # noqa: E402

BATCH = 16  # global; a poisoned example at row 12 of a batch is in worker 1's half


def blobs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(0, 2, (3, 6))
    y = rng.integers(0, 3, n).astype("int32")
    return (centers[y] + rng.normal(0, 1, (n, 6))).astype("float32"), y


class Blobs(framework.Trainer):
    """A small classifier whose config.task picks metrics, heads, an eval set and a poisoned batch."""

    def build_model(self):
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        if self.config.task.heads:
            outputs = {
                "cls": keras.layers.Dense(3, name="cls")(hidden),
                "aux": keras.layers.Dense(3, name="aux")(hidden),
            }
        else:
            outputs = keras.layers.Dense(3, dtype="float32")(hidden)
        return keras.Model(inputs, outputs)

    def build_loss(self):
        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if self.config.task.heads:
            return losses.Term(ce, head="cls") + 0.5 * losses.Term(ce, head="aux") + losses.L2(1e-3)
        return losses.Term(ce, name="ce") + losses.L2(1e-3)

    def build_metrics(self):
        kind = self.config.task.metrics
        if kind == "heads":
            return {
                "cls": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                "aux": [
                    keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                    keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2"),
                ],
            }
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def _labels(self, x, y):
        if self.config.task.heads:
            return x, {"cls": y, "aux": y}
        return x, y

    def build_train_dataset(self, input_context):
        task = self.config.task
        dataset = tf.data.Dataset.from_tensor_slices(blobs(80, 0))
        dataset = dataset.shuffle(80, seed=self.config.seed, reshuffle_each_iteration=True)
        if task.poison:
            value = float("nan") if task.poison == "nan" else 1000.0
            at = task.poison_batch * BATCH + 12

            def poison(i, example):
                x, y = example
                return tf.where(tf.equal(i, at), tf.fill(tf.shape(x), value), x), y

            dataset = dataset.enumerate().map(poison)
        dataset = dataset.map(self._labels)
        return distribute.global_batches(dataset, input_context, BATCH)

    def build_eval_dataset(self, input_context):
        if not self.config.task.eval:
            return None
        dataset = tf.data.Dataset.from_tensor_slices(blobs(40, 1)).map(self._labels)
        return distribute.global_batches(dataset, input_context, BATCH)


class F1Labels(Blobs):
    def build_loss(self):
        ce = keras.losses.CategoricalCrossentropy(from_logits=True)
        return losses.Term(ce, name="ce") + losses.L2(1e-3)

    def build_metrics(self):
        return [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.F1Score(average="macro", name="f1"),
            keras.metrics.F1Score(average=None, threshold=0.5, name="f1_each"),
        ]

    def _labels(self, x, y):
        return x, tf.one_hot(y, 3)


class Embeddings(Blobs):
    """RecallAtK gathers every replica's embeddings into one buffer per replica."""

    def build_metrics(self):
        return [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            RecallAtK([1, 3], dim=3, capacity=256),
        ]


class RandomDraws(Blobs):
    """Dropout (seed 5) in the model and noise from the trainer's SeedGenerator (seed 11) in a
    custom step; each worker keeps its replica's last mask and noise (`draws`)."""

    WIDTH = 256

    def build_model(self):
        self.noise = keras.random.SeedGenerator(11)
        rows = BATCH // self.strategy.num_replicas_in_sync
        self.drawn = keras.Variable(
            np.zeros((rows, self.WIDTH), "float32"), trainable=False, aggregation="none"
        )
        self.mask = keras.Variable(
            np.zeros((rows, self.WIDTH), "float32"), trainable=False, aggregation="none"
        )
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(self.WIDTH, activation="relu")(inputs)
        self.dropout = keras.layers.Dropout(0.3, seed=5)
        return keras.Model(inputs, keras.layers.Dense(3)(hidden))

    def train_step(self, batch):
        x, y = batch
        rows = tf.shape(x)[0]
        self.drawn.assign(keras.random.normal((rows, self.WIDTH), seed=self.noise))
        self.mask.assign(self.dropout(tf.ones((rows, self.WIDTH)), training=True))
        with tf.GradientTape() as tape:
            loss, logs = self.compute_loss(y, self.model(x, training=True))
        self.apply_gradients(tape, loss)
        return logs

    def draws(self) -> dict:
        return {"mask": np.asarray(self.mask).tolist(), "noise": np.asarray(self.drawn).tolist()}


def view_pairs(n: int, seed: int):
    """Two noisy views of each of n random points: `[n, 2, 6]`."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 1, 6)) + 0.5 * rng.normal(size=(n, 2, 6))).astype("float32")


class Contrastive(Blobs):
    """SimCLR-style, negatives from the global batch: `losses.NTXent` (config.task.step "term") or
    a custom step that computes the whole loss from `distribute.all_gather` ("whole")."""

    def build_model(self):
        return keras.Sequential(
            [keras.Input((2, 6)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(4)]
        )

    def build_loss(self):
        return losses.NTXent(0.2)

    def build_metrics(self):
        return []

    def build_train_dataset(self, input_context):
        dataset = tf.data.Dataset.from_tensor_slices(view_pairs(80, 0))
        dataset = dataset.shuffle(80, seed=self.config.seed, reshuffle_each_iteration=True)
        return distribute.global_batches(dataset, input_context, BATCH)

    def build_eval_dataset(self, input_context):
        return distribute.global_batches(
            tf.data.Dataset.from_tensor_slices(view_pairs(40, 1)), input_context, BATCH
        )

    def train_step(self, batch):
        if self.config.task.step == "term":
            return super().train_step(batch)
        with tf.GradientTape() as tape:
            z = tf.math.l2_normalize(self.model(batch, training=True), axis=-1)
            views = tf.reshape(distribute.all_gather(z), [-1, 4])  # every replica: the whole loss
            logits = tf.matmul(views, views, transpose_b=True) / 0.2
            logits = tf.where(tf.eye(tf.shape(views)[0]) > 0, -1e9, logits)
            positives = tf.bitwise.bitwise_xor(tf.range(tf.shape(views)[0]), 1)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(positives, logits, from_logits=True)
            )
        self.apply_gradients(tape, loss)
        return {"loss": loss}


def _contrastive(step: str):
    config = base_config(eval=True)
    config.task.step = step
    return Contrastive, config


def base_config(**task):
    config = framework.config.defaults()
    config.checkpoint.min_interval_secs = 0  # every due save: the tests resume from them
    config.batch_size = BATCH
    config.epochs = 2
    config.steps_per_execution = 2
    config.log_every_steps = 2
    config.optimizer.learning_rate = 0.01
    config.task.metrics = task.pop("metrics", "accuracy")
    config.task.heads = task.pop("heads", False)
    config.task.eval = task.pop("eval", False)
    config.task.poison = task.pop("poison", "")
    config.task.poison_batch = task.pop("poison_batch", 2)
    assert not task, task
    return config


def _callbacks():
    return [
        keras.callbacks.EarlyStopping(monitor="loss", min_delta=0.08, patience=0),
        keras.callbacks.ReduceLROnPlateau(
            monitor="loss", factor=0.5, patience=0, min_delta=10.0, min_lr=1e-5
        ),
    ]


def _gan():
    import gan  # experiments/gan.py

    config = _load_config("gan", "smoke")
    config.epochs = 2
    config.data.train_points, config.data.eval_points = 640, 128
    return gan.GanTrainer, config


def _load_config(name: str, variant: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"config_{name}", os.path.join(ROOT, "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _mixed():
    config = base_config(poison="huge", poison_batch=1)
    config.precision = "mixed_float16"
    return Blobs, config


def _with(cls, config, **changes):
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cls, config


# name -> () -> (trainer class, config[, callbacks])
CASES = {
    "metrics": lambda: (Embeddings, base_config()),
    "f1": lambda: (F1Labels, base_config()),
    "heads": lambda: (Blobs, base_config(metrics="heads", heads=True, eval=True)),
    "eval_best_midepoch": lambda: _with(
        Blobs,
        base_config(eval=True),
        epochs=3,
        **{
            "checkpoint.every_steps": 3,
            "checkpoint.best_metric": "val/accuracy",
            "checkpoint.best_mode": "min",
            "checkpoint.max_to_keep": 1,
        },
    ),  # fmt: skip
    "ema_accum": lambda: _with(Blobs, base_config(eval=True), grad_accum_steps=2, **{"optimizer.ema": 0.9}),
    "mixed_overflow": _mixed,
    "nan_skip": lambda: _with(Blobs, base_config(poison="nan"), nan_policy="skip"),
    "nan_restore": lambda: _with(
        Blobs, base_config(poison="nan"), nan_policy="restore", **{"checkpoint.every_steps": 2}
    ),
    "callbacks": lambda: (*_with(Blobs, base_config(), epochs=12), _callbacks()),
    "gan": _gan,
    "random_draws": lambda: _with(RandomDraws, base_config(), epochs=1),
    "contrastive": lambda: _contrastive("term"),
    "contrastive_step": lambda: _contrastive("whole"),
    "long": lambda: _with(
        Blobs, base_config(eval=True), epochs=10, steps_per_execution=1, **{"checkpoint.every_steps": 4}
    ),
}

EXPERIMENTS = {
    "digits": "DigitsTrainer",
    "imbalanced": "ImbalancedTrainer",
    "segmentation": "SegmentationTrainer",
    "multitask": "MultitaskTrainer",
    "metric_learning": "MetricLearningTrainer",
    "ranking": "RankingTrainer",
    "gan": "GanTrainer",
}


# Two epochs (both boundaries) on less data: the workers stay in sync, or not, within a few steps.
SMOKE_DATA = {"segmentation": {"data.train_images": 320}, "gan": {"data.train_points": 1280}}


def _experiment(name: str):
    """The experiment's smoke config, cut to at most two epochs and, where its steps are many,
    to fewer training examples (still whole global batches)."""
    import importlib

    config = _load_config(name, "smoke")
    config.epochs = min(config.epochs, 2)
    return _with(
        getattr(importlib.import_module(name), EXPERIMENTS[name]), config, **SMOKE_DATA.get(name, {})
    )


def build(name: str):
    """Case `name`; `name@tag` is the same case (in its own workdir: `run_case`)."""
    name = name.split("@")[0]
    if name.startswith("smoke/"):
        made = _experiment(name[len("smoke/") :])
    else:
        made = CASES[name]()
    cls, config, *rest = made
    return cls, config, (rest[0] if rest else [])


def _slow_calls(seconds: float):
    """A hook that makes every step take a while, so that a test can signal a worker mid-run."""
    return framework.Periodic(lambda trainer, step, logs: time.sleep(seconds), every_steps=1)


def run_case(name: str, strategy, root: str, step_seconds: float) -> dict:
    cls, config, callbacks = build(name)
    workdir = os.path.join(root, name.replace("/", "-").replace("@", "-"))
    trainer = cls(config, workdir, strategy=strategy)
    if step_seconds:
        callbacks = [*callbacks, _slow_calls(step_seconds)]
    history = trainer.fit(validate=bool(config.task.get("eval", True)), callbacks=callbacks)
    models = [trainer.model] + [
        m for m in vars(trainer).values() if isinstance(m, keras.Model) and m is not trainer.model
    ]
    result = {
        "weights": [w.tolist() for m in models for w in m.get_weights()],
        "history": history,
        "step": trainer.step,
        "epoch": trainer.epoch,
        "lr": float(framework.optim.optimizer_builder.current_learning_rate(trainer.optimizer)),
    }
    if hasattr(trainer, "draws"):
        result["draws"] = trainer.draws()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="multi_worker")
    parser.add_argument("--root", required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--step_seconds", type=float, default=0.0)
    parser.add_argument("--peer_timeout_secs", type=int, default=round(seconds(30)))
    args = parser.parse_args()
    dist = framework.config.defaults().distribution
    dist.strategy = args.strategy
    dist.peer_timeout_secs = args.peer_timeout_secs
    strategy = distribute.make_strategy(dist)
    results = {}
    for name in args.cases.split(","):
        results[name] = run_case(name, strategy, args.root, args.step_seconds)
        with open(args.out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
