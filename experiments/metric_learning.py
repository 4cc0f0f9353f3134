"""Metric learning on digits: triplet loss with batch-hard mining, judged by retrieval.

An MLP maps each 8x8 digit to a unit-length 32-d embedding. The loss is
`losses.Triplet(mining="batch_hard")`: for every anchor in the global batch,
its farthest same-digit example must be closer than its nearest other-digit
example by a margin (mined over all replicas' examples, as on one device).
No classifier is trained. Evaluation asks, for every held-out digit, whether
its nearest neighbours among the other held-out digits show the same digit:
Recall@1 and Recall@5 (`framework.metrics.RecallAtK`, logged as
`recall_at_k/1` and `recall_at_k/5`).

python experiments/metric_learning.py --config=configs/metric_learning.py --workdir=runs/metric_learning
"""

from __future__ import annotations

import keras

import framework
from common import ArraysTrainer, digits_split
from framework import losses, metrics


class MetricLearningTrainer(ArraysTrainer):
    def load_arrays(self, config):
        x_train, x_eval, y_train, y_eval = digits_split(config.data.eval_fraction, config.seed)
        return (x_train, y_train), (x_eval, y_eval)

    def build_model(self):
        cfg = self.config.model
        layers = [
            keras.Input((64,)),
            keras.layers.Dense(cfg.hidden, activation="relu"),
            keras.layers.Dense(cfg.hidden, activation="relu"),
            keras.layers.Dense(cfg.dim, dtype="float32"),
        ]
        if cfg.normalize:
            layers.append(keras.layers.UnitNormalization(dtype="float32"))
        return keras.Sequential(layers, name="embedder")

    def build_loss(self):
        task = self.config.task
        return losses.Triplet(margin=task.margin, mining=task.mining) + losses.L2(task.l2)

    def build_eval_metrics(self):
        # Retrieval within the eval set: the buffer holds one evaluation's embeddings.
        return [metrics.RecallAtK([1, 5], dim=self.config.model.dim, capacity=len(self.eval_data[1]))]


if __name__ == "__main__":
    framework.run(MetricLearningTrainer)
