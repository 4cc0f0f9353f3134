"""Digit classification: the default experiment and the smallest full example.

python experiments/digits.py --config=configs/digits.py --workdir=runs/digits
"""

import keras
import numpy as np

import framework
from common import ArraysTrainer, digits_split
from framework import losses


class DigitsTrainer(ArraysTrainer):
    def load_arrays(self, config):
        x_train, x_eval, y_train, y_eval = digits_split(config.data.eval_fraction, config.seed)
        return (x_train, y_train), (x_eval, y_eval)

    def build_model(self):
        cfg = self.config.model
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(cfg.hidden, activation="relu"),
                keras.layers.Dropout(cfg.dropout),
                keras.layers.Dense(10, dtype="float32"),  # logits in float32 under mixed precision
            ],
            name="digits_mlp",
        )

    def build_loss(self):
        ce = losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")
        return ce + losses.L2(self.config.task.l2)

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    framework.run(DigitsTrainer)
