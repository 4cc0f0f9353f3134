"""Multi-task learning on digits: three heads, partly missing labels, a warm-up weight.

One shared trunk reads scikit-learn's 8x8 digits and feeds three heads:
`class` (10-way, cross-entropy), `parity` (odd or even, binary cross-entropy)
and `ink` (the standardized amount of ink, Huber). About 30% of the training
examples have no class label: their `class` sample weight is 0, so they
neither count nor dilute the class term's mean (its denominator is the
global sum of weights) while still training the other two heads. The parity
term's weight ramps linearly from 0 to its value over the first
`task.warmup_steps` steps (a `step -> weight` schedule evaluated inside the
compiled step). Every term is logged weighted (`loss/<head>`), and
unweighted (`loss/<head>/raw`) when its weight is not 1; metrics are per
head (`class/accuracy`, ...).

python experiments/multitask.py --config=configs/multitask.py --workdir=runs/multitask
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import framework
from common import ArraysTrainer, digits_split
from framework import losses


def multitask_data(eval_fraction: float, unlabelled: float, seed: int):
    """Train (x, labels, sample weights) and eval (x, labels); labels and weights keyed by head."""
    x_train, x_eval, digit_train, digit_eval = digits_split(eval_fraction, seed)
    ink_train, ink_eval = x_train.mean(axis=1), x_eval.mean(axis=1)
    mean, std = ink_train.mean(), ink_train.std()

    def labels(digit, ink):
        return {
            "class": digit,
            "parity": (digit % 2).astype("float32")[:, None],
            "ink": ((ink - mean) / std).astype("float32")[:, None],
        }

    observed = np.random.default_rng(seed).random(len(digit_train)) >= unlabelled
    weights = {
        "class": observed.astype("float32"),
        "parity": np.ones(len(digit_train), "float32"),
        "ink": np.ones(len(digit_train), "float32"),
    }
    return (x_train, labels(digit_train, ink_train), weights), (x_eval, labels(digit_eval, ink_eval))


def linear_warmup(peak: float, steps: int):
    """`step -> weight`: 0 at step 0, `peak` from `steps` on."""
    return lambda step: peak * tf.minimum(1.0, tf.cast(step, tf.float32) / steps)


class MultitaskTrainer(ArraysTrainer):
    def load_arrays(self, config):
        return multitask_data(config.data.eval_fraction, config.data.unlabelled, config.seed)

    def build_model(self):
        inputs = keras.Input((64,))
        trunk = keras.layers.Dense(self.config.model.hidden, activation="relu")(inputs)
        trunk = keras.layers.Dropout(self.config.model.dropout)(trunk)
        trunk = keras.layers.Dense(self.config.model.hidden, activation="relu")(trunk)
        outputs = {  # logits for class and parity; float32 under mixed precision
            "class": keras.layers.Dense(10, dtype="float32", name="class")(trunk),
            "parity": keras.layers.Dense(1, dtype="float32", name="parity")(trunk),
            "ink": keras.layers.Dense(1, dtype="float32", name="ink")(trunk),
        }
        return keras.Model(inputs, outputs, name="multitask_mlp")

    def build_loss(self):
        task = self.config.task
        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        return (
            losses.Term(ce, head="class", weight=task.class_weight)
            + losses.Term(bce, head="parity", weight=linear_warmup(task.parity_weight, task.warmup_steps))
            + losses.Term(keras.losses.Huber(delta=1.0), head="ink", weight=task.ink_weight)
            + losses.L2(task.l2)
        )

    def build_metrics(self):
        return {
            "class": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            "parity": [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")],  # logit > 0: odd
            "ink": [keras.metrics.MeanAbsoluteError(name="mae")],
        }


if __name__ == "__main__":
    framework.run(MultitaskTrainer)
