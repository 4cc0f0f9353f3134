"""Two workers whose datasets give them uneven numbers of batches: the worker script.

Worker k's training data is `TRAIN[k]` examples and its evaluation data `EVAL[k]`
(batches of 8 per worker). In mode "eval" the training data are even and the
evaluation data uneven; the script trains, evaluates, and writes to --out its
history, its own `evaluate()`, and Keras' `evaluate` of the same weights on
every worker's evaluation examples together (the reference). In "train"
the training data are uneven: the framework must refuse them. In "read_on"
they are uneven (6 and 2 batches) and `config.steps_per_epoch=2`: each worker reads on through its own data, starting
its next pass where it runs out; --out gets the largest weight difference from
Keras' fit (SGD) on the global batches that makes (the reference).

Several modes run one after another in one process, under one strategy; each is announced on
stderr by `MODE <m> starts` and, when it ends without an error, `MODE <m> done`:

    TF_CONFIG=... python tests/uneven_workers.py --modes=eval,read_on,train --root=/tmp/u \
        --out=/tmp/u0-{mode}.json
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

EVAL = (40, 24)  # 5 and 3 batches of 8
TRAIN = {"eval": (48, 48), "train": (48, 32), "read_on": (48, 16)}
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def examples(worker: int, n: int, split: str):
    rng = np.random.default_rng([worker, n, split == "eval"])
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, 3, n).astype("int32")


def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inputs)))


class UnevenTrainer(framework.Trainer):
    def build_model(self):
        return model()

    def build_loss(self):
        return losses.Term(CE, name="ce")

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def _data(self, context, split, counts):
        x, y = examples(context.input_pipeline_id, counts[context.input_pipeline_id], split)
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(context.get_per_replica_batch_size(16))

    def build_train_dataset(self, context):
        return self._data(context, "train", TRAIN[self.config.task.mode])

    def build_eval_dataset(self, context):
        return self._data(context, "eval", EVAL)


def read_on_difference(trained: keras.Model) -> float:
    """Largest |w - w_keras|, Keras fitting one device on the global batches of reading on.

    Global step s is worker 0's batch s mod 6 and worker 1's batch s mod 2, 8 examples each.
    """
    parts = [examples(w, n, "train") for w, n in enumerate(TRAIN["read_on"])]

    def global_batch(step):
        starts = [8 * (step % (len(y) // 8)) for _, y in parts]
        return tuple(np.concatenate([p[i][a : a + 8] for p, a in zip(parts, starts)]) for i in (0, 1))

    x, y = (np.concatenate(column) for column in zip(*(global_batch(s) for s in range(6))))
    reference = model()
    reference.compile(keras.optimizers.SGD(0.1), loss=CE)
    reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return max(float(np.max(np.abs(a - b))) for a, b in zip(trained.get_weights(), reference.get_weights()))


def run_mode(mode: str, workdir: str, out: str, strategy) -> None:
    config = framework.config.defaults()
    config.checkpoint.min_interval_secs = 0  # every due save: the tests resume from them
    config.batch_size, config.epochs = 16, 2
    config.distribution.strategy = "multi_worker"
    config.task.mode = mode
    if mode == "read_on":
        config.steps_per_epoch, config.epochs = 2, 3
        config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.1
    trainer = UnevenTrainer(config, workdir, strategy=strategy)
    history = trainer.fit()
    if mode == "read_on":
        with open(out, "w") as f:
            json.dump({"history": history, "max_abs_diff": read_on_difference(trainer.model)}, f)
        return
    reference = model()
    reference.set_weights(trainer.model.get_weights())
    reference.compile(loss=CE, metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    x, y = (np.concatenate(parts) for parts in zip(*(examples(w, n, "eval") for w, n in enumerate(EVAL))))
    keras_eval = reference.evaluate(x, y, batch_size=len(y), verbose=0, return_dict=True)
    with open(out, "w") as f:
        json.dump({"history": history, "evaluate": trainer.evaluate(), "keras": keras_eval}, f)


MODE_MARK = "MODE"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--modes", required=True, help="comma-separated, run in this order under one strategy"
    )
    parser.add_argument("--root", required=True, help="mode m trains in <root>/<m>")
    parser.add_argument("--out", required=True, help="a path with {mode} in it")
    args = parser.parse_args()
    absl_logging.set_verbosity(absl_logging.INFO)
    dist = framework.config.defaults().distribution
    dist.strategy = "multi_worker"
    strategy = distribute.make_strategy(dist)
    for mode in args.modes.split(","):
        print(f"{MODE_MARK} {mode} starts", file=sys.stderr, flush=True)
        run_mode(mode, os.path.join(args.root, mode), args.out.format(mode=mode), strategy)
        sys.stderr.flush()
        print(f"{MODE_MARK} {mode} done", file=sys.stderr, flush=True)


def logs_by_mode(stderr: str) -> dict[str, str]:
    """A worker's stderr split at its `MODE <m> starts` lines: {mode: that mode's log}."""
    parts = stderr.split(f"{MODE_MARK} ")[1:]
    logs: dict[str, str] = {}
    for part in parts:
        mode, _ = part.split(maxsplit=1)
        logs[mode] = logs.get(mode, "") + part
    return logs


if __name__ == "__main__":
    main()
