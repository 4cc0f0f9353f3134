"""Learning to rank with RankNet, judged by NDCG@5 against random scores.

Generated data: each query is a list of items with feature vectors; an
item's graded relevance (0-3) comes from a hidden nonlinear function of its
features plus noise, cut at fixed quantiles (most items are irrelevant, few
are perfect). A per-item MLP scores the items of a list independently; the
pairwise logistic loss `losses.RankNet()` pushes every more relevant item
above every less relevant one of the same list. NDCG@5
(`framework.metrics.NDCG`) measures the ranking on held-out lists; every
evaluation also logs `ndcg_5_random`, the NDCG@5 that uniformly random scores
get on the same lists (the same metric, averaged over 10 draws): the baseline
to beat.

python experiments/ranking.py --config=configs/ranking.py --workdir=runs/ranking
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import framework
from common import batches
from framework import losses, metrics

RELEVANCE_QUANTILES = (0.6, 0.85, 0.95)  # below: 0; then 1, 2; above the last: 3


def ranking_lists(lists: int, list_size: int, features: int, *, noise: float, seed: int):
    """(features [lists, list_size, features], relevance [lists, list_size]), float32."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=features) / np.sqrt(features)
    x = rng.normal(size=(lists, list_size, features)).astype("float32")
    hidden = x @ w + 0.5 * x[..., 0] * x[..., 1] - 0.3 * x[..., 2] ** 2  # linear + interactions
    score = hidden + noise * rng.normal(size=hidden.shape)
    relevance = np.digitize(score, np.quantile(score, RELEVANCE_QUANTILES))
    return x, relevance.astype("float32")


def random_ndcg(relevance: np.ndarray, k: int, *, draws: int = 10, seed: int = 0) -> float:
    """NDCG@k of uniformly random scores, averaged over `draws`, computed as for the model."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        metric = metrics.NDCG(k)
        metric.update_state(relevance, rng.random(relevance.shape).astype("float32"))
        values.append(float(metric.result()))
    return float(np.mean(values))


class RankingTrainer(framework.Trainer):
    def __init__(self, config, workdir=None, **kwargs):
        data = config.data
        x, relevance = ranking_lists(
            data.train_lists + data.eval_lists,
            data.list_size,
            data.features,
            noise=data.noise,
            seed=config.seed,
        )
        split = data.train_lists
        self.train_data, self.eval_data = (x[:split], relevance[:split]), (x[split:], relevance[split:])
        super().__init__(config, workdir, **kwargs)  # before any TensorFlow op: it sets up the devices
        self.random_ndcg = random_ndcg(self.eval_data[1], self.config.task.k, seed=self.config.seed)
        logging.info("NDCG@%d of random scores on the eval lists: %.4f", self.config.task.k, self.random_ndcg)

    def build_model(self):
        cfg = self.config
        return keras.Sequential(
            [
                keras.Input((cfg.data.list_size, cfg.data.features)),
                keras.layers.Dense(cfg.model.hidden, activation="relu"),  # per item (last axis)
                keras.layers.Dense(cfg.model.hidden, activation="relu"),
                keras.layers.Dense(1, dtype="float32"),
                keras.layers.Reshape((cfg.data.list_size,)),  # scores [lists, list_size]
            ],
            name="item_scorer",
        )

    def build_loss(self):
        return losses.RankNet() + losses.L2(self.config.task.l2)

    def build_metrics(self):
        return [metrics.NDCG(self.config.task.k)]

    def eval_step(self, batch):
        # The baseline rides along: every evaluation logs val/ndcg_5_random beside val/ndcg_5.
        return {
            **super().eval_step(batch),
            f"ndcg_{self.config.task.k}_random": tf.constant(self.random_ndcg),
        }

    def build_train_dataset(self, input_context):
        return batches(self.train_data, input_context, self.config.batch_size, shuffle_seed=self.config.seed)

    def build_eval_dataset(self, input_context):
        return batches(self.eval_data, input_context, self.config.batch_size)


if __name__ == "__main__":
    framework.run(RankingTrainer)
