"""Endless training inputs for the resume tests, and their worker script.

`StreamTrainer` trains a small conv net on 8x8 images in epochs of
`config.steps_per_epoch` steps over an endless pipeline (config.task.pipeline):
"array" `from_tensor_slices -> shuffle -> repeat -> map -> batch` ("reshuffle":
a new order each pass; "global": `framework.data.global_shuffle`;
"batched_reshuffle": reshuffled, batched, then repeated; "repeat_reshuffle": repeated,
then reshuffled), "records"
`list_files -> shuffle -> interleave -> parse -> shuffle -> repeat -> batch`
over shards `write_shards` made ("records_reshuffle": `list_files(shuffle=True)`
and a reshuffling record shuffle; "records_indexed": `framework.data.shuffled_records
-> parse -> batch`, no buffer), "generator" a Python generator. Batches are global
(`distribute.global_batches`): one process, mirrored replicas and several
workers see the same global batches. "records_sharded" is the exception, as a
multi-worker script reads: `shuffled_records` over each worker's own shards.

As a script, a list of runs (fits) one after another in one process, under one
strategy; each run writes its final weights to its `out` and is announced on
stderr by a line `RUN_MARK <index>`, so that a test can read each run's log:

    python tests/stream_cases.py --strategy=multi_worker --runs='[{"pipeline": "records",
        "pattern": "/tmp/d/*.tfrecord", "workdir": "/tmp/w", "epochs": 4, "out": "/tmp/w0.npz"}]'

A run's keys: pipeline, pattern, workdir, epochs, out, and step_based (optional).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import logging as absl_logging

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import framework  # noqa: E402
from framework import distribute, losses  # noqa: E402

SIDE = 8


def images(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype("int32")
    x = rng.normal(0, 1, (n, SIDE, SIDE, 1)).astype("float32") + y[:, None, None, None]
    return x, y


def write_shards(directory: str, n: int = 96, shards: int = 4) -> str:
    """Writes `n` images into `shards` TFRecord files; returns their glob pattern."""
    x, y = images(n)
    os.makedirs(directory, exist_ok=True)
    for s in range(shards):
        with tf.io.TFRecordWriter(os.path.join(directory, f"images-{s}.tfrecord")) as writer:
            for i in range(s, n, shards):
                feature = {
                    "x": tf.train.Feature(float_list=tf.train.FloatList(value=x[i].ravel())),
                    "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[y[i]])),
                }
                writer.write(
                    tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
                )
    return os.path.join(directory, "images-*.tfrecord")


def parse(record):
    parsed = tf.io.parse_single_example(
        record,
        {"x": tf.io.FixedLenFeature([SIDE * SIDE], tf.float32), "y": tf.io.FixedLenFeature([], tf.int64)},
    )
    return tf.reshape(parsed["x"], [SIDE, SIDE, 1]), tf.cast(parsed["y"], tf.int32)


def scale(x, y):
    return x * 0.5, y


def array_pipeline(input_context, batch_size: int, seed: int, *, shuffle: str = "buffer"):
    """shuffle: "buffer" (one order), "reshuffle" (a new order each pass), "global"
    (`global_shuffle`), "batched_reshuffle" (reshuffled, batched, then repeated:
    tf.data does not restore that exactly), "repeat_reshuffle" (repeated, then
    shuffled: one endless pass)."""
    dataset = tf.data.Dataset.from_tensor_slices(images(96))
    if shuffle == "repeat_reshuffle":
        dataset = dataset.repeat().shuffle(64, seed=seed, reshuffle_each_iteration=True)
        return distribute.global_batches(dataset.map(scale), input_context, batch_size)
    if shuffle == "global":
        dataset = framework.data.global_shuffle(dataset, seed)
    else:
        dataset = dataset.shuffle(64, seed=seed, reshuffle_each_iteration=shuffle != "buffer")
    if shuffle == "batched_reshuffle":
        return distribute.global_batches(dataset.map(scale), input_context, batch_size).repeat()
    return distribute.global_batches(dataset.repeat().map(scale), input_context, batch_size)


def record_pipeline(input_context, batch_size: int, seed: int, pattern: str, *, reshuffle: bool = False):
    """reshuffle: files and records in a new order each pass (`list_files(shuffle=True)`)."""
    if reshuffle:
        files = tf.data.Dataset.list_files(pattern, shuffle=True, seed=seed)
    else:
        files = tf.data.Dataset.list_files(pattern, shuffle=False)
        files = files.shuffle(64, seed=seed, reshuffle_each_iteration=False)
    dataset = files.interleave(tf.data.TFRecordDataset, cycle_length=2, block_length=1)
    dataset = dataset.map(parse).shuffle(32, seed=seed, reshuffle_each_iteration=reshuffle)
    return distribute.global_batches(dataset.repeat(), input_context, batch_size)


def indexed_record_pipeline(batch_size: int, seed: int, pattern: str, input_context):
    """`shuffled_records`, parsed and batched. Every pipeline reads all shards: global batches
    need the same stream on every worker (a real multi-worker input passes input_context)."""
    dataset = framework.data.shuffled_records(pattern, seed, cycle_length=2)
    return distribute.global_batches(dataset.map(parse), input_context, batch_size)


def sharded_record_pipeline(batch_size: int, seed: int, pattern: str, input_context):
    """`shuffled_records` over this input pipeline's own shards, as a multi-worker script reads
    them: each worker's stream, and so its saved position, is its own."""
    dataset = framework.data.shuffled_records(pattern, seed, cycle_length=2, input_context=input_context)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    return dataset.map(parse).batch(batch_size, drop_remainder=True)


def generator_pipeline(input_context, batch_size: int, seed: int):
    x, y = images(96)

    def examples():
        order = np.random.default_rng(seed).permutation(len(y))
        while True:
            yield from ((x[i], y[i]) for i in order)

    spec = (tf.TensorSpec([SIDE, SIDE, 1], tf.float32), tf.TensorSpec([], tf.int32))
    dataset = tf.data.Dataset.from_generator(examples, output_signature=spec)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    return distribute.global_batches(dataset, input_context, batch_size)


class StreamTrainer(framework.Trainer):
    """A conv net on an endless stream; config.task.pipeline picks it: array, global, records, generator."""

    def build_model(self):
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((SIDE, SIDE, 1)),
                keras.layers.Conv2D(4, 3, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(3),
            ]
        )

    def build_loss(self):
        return losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def build_train_dataset(self, input_context):
        task, batch, seed = self.config.task, self.config.batch_size, self.config.seed
        if task.pipeline in ("records", "records_reshuffle"):
            reshuffle = task.pipeline == "records_reshuffle"
            return record_pipeline(input_context, batch, seed, task.pattern, reshuffle=reshuffle)
        if task.pipeline == "records_indexed":
            return indexed_record_pipeline(batch, seed, task.pattern, input_context)
        if task.pipeline == "records_sharded":
            return sharded_record_pipeline(batch, seed, task.pattern, input_context)
        if task.pipeline == "generator":
            return generator_pipeline(input_context, batch, seed)
        shuffles = ("global", "reshuffle", "batched_reshuffle", "repeat_reshuffle")
        shuffle = task.pipeline if task.pipeline in shuffles else "buffer"
        return array_pipeline(input_context, batch, seed, shuffle=shuffle)


def config(
    pipeline: str,
    *,
    epochs: int,
    replicas: int = 1,
    pattern: str = "",
    strategy: str = "",
    step_based: bool = False,
    **overrides,
):
    """`epochs` periods of 5 steps: epochs of `steps_per_epoch`, or evaluation intervals of a step-based run."""
    c = framework.config.defaults()
    c.checkpoint.min_interval_secs = 0  # every due save: the tests resume from them
    c.batch_size = 8
    c.epochs = epochs
    c.steps_per_epoch = 5
    if step_based:
        c.epochs, c.steps_per_epoch = 0, 0
        c.train_steps, c.eval_every_steps = 5 * epochs, 5
    c.steps_per_execution = 2
    c.log_every_steps = 5
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05
    c.checkpoint.every_steps = 3
    c.task.pipeline = pipeline
    c.task.pattern = pattern
    if replicas > 1:
        c.distribution.strategy = "mirrored"
        c.distribution.cpu_devices = replicas
    if strategy:
        c.distribution.strategy = strategy
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


RUN_MARK = "RUN_MARK"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="")
    parser.add_argument("--runs", required=True, help="a JSON list of runs: see the module docstring")
    args = parser.parse_args()
    absl_logging.set_verbosity(absl_logging.INFO)  # every worker says how it resumed its input
    runs = json.loads(args.runs)
    strategy = None
    for index, run in enumerate(runs):
        cfg = config(
            run["pipeline"],
            epochs=run["epochs"],
            pattern=run.get("pattern", ""),
            strategy=args.strategy,
            step_based=run.get("step_based", False),
        )
        strategy = strategy or distribute.make_strategy(cfg.distribution)
        print(f"{RUN_MARK} {index}", file=sys.stderr, flush=True)
        trainer = StreamTrainer(cfg, run["workdir"], strategy=strategy)
        trainer.fit()
        weights = {f"w{i}": w for i, w in enumerate(trainer.model.get_weights())}
        np.savez(run["out"], step=trainer.step, **weights)
        sys.stderr.flush()


def logs_by_run(stderr: str, count: int) -> list[str]:
    """Splits a process's stderr at its `RUN_MARK` lines: one log per run, in order."""
    parts = stderr.split(f"{RUN_MARK} ")[1:]
    assert [int(part.split(maxsplit=1)[0]) for part in parts] == list(range(count)), stderr[-3000:]
    return parts


if __name__ == "__main__":
    main()
