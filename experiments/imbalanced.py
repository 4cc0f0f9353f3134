"""Imbalanced binary classification: plain, weighted and focal cross-entropy compared.

Scikit-learn's breast-cancer data (569 tumours, 30 features) with the
malignant class, the positives, subsampled to ~10% of the examples. With so
few positives a classifier trained on plain cross-entropy leans towards
"benign" and misses positives at the 0.5 threshold. Weighting the positives
(`losses.WeightedBinaryCrossentropy`) or focusing on hard examples (Keras'
`BinaryFocalCrossentropy` as a term) moves the trade-off; F1 at 0.5, PR-AUC
and recall at a fixed precision show by how much. One config variant per loss:

python experiments/imbalanced.py --config=configs/imbalanced.py:bce --workdir=runs/imbalanced_bce
python experiments/imbalanced.py --config=configs/imbalanced.py:weighted --workdir=runs/imbalanced_weighted
python experiments/imbalanced.py --config=configs/imbalanced.py:focal --workdir=runs/imbalanced_focal
python scripts/plot_run.py runs/imbalanced_bce runs/imbalanced_weighted runs/imbalanced_focal \
    --out imbalanced.png
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

import framework
from common import ArraysTrainer
from framework import losses


def imbalanced_split(positive_share: float, eval_fraction: float, seed: int):
    """(x_train, y_train), (x_eval, y_eval): standardized features, labels [n, 1] (1 = malignant).

    All benign tumours are kept; malignant ones are drawn (with `seed`) so
    that they make up `positive_share` of the data. The split is stratified and the
    standardization uses training statistics only.
    """
    features, target = load_breast_cancer(return_X_y=True)
    labels = 1 - target  # scikit-learn codes malignant as 0
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    count = round(len(negatives) * positive_share / (1 - positive_share))
    keep = np.sort(np.concatenate([negatives, rng.choice(positives, count, replace=False)]))
    x_train, x_eval, y_train, y_eval = train_test_split(
        features[keep], labels[keep], test_size=eval_fraction, random_state=seed, stratify=labels[keep]
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)

    def prepare(x, y):
        return ((x - mean) / std).astype("float32"), y[:, None].astype("float32")

    return prepare(x_train, y_train), prepare(x_eval, y_eval)


class ImbalancedTrainer(ArraysTrainer):
    def load_arrays(self, config):
        return imbalanced_split(config.data.positive_share, config.data.eval_fraction, config.seed)

    def build_model(self):
        return keras.Sequential(
            [
                keras.Input((30,)),
                keras.layers.Dense(self.config.model.hidden, activation="relu"),
                keras.layers.Dropout(self.config.model.dropout),
                # Probabilities, not logits: F1Score, AUC and RecallAtPrecision threshold them.
                keras.layers.Dense(1, activation="sigmoid", dtype="float32"),
            ],
            name="imbalanced_mlp",
        )

    def build_loss(self):
        task = self.config.task
        if task.loss == "bce":
            term = losses.Term(keras.losses.BinaryCrossentropy(), name="bce")
        elif task.loss == "weighted":
            term = losses.WeightedBinaryCrossentropy(pos_weight=task.pos_weight, name="weighted_bce")
        elif task.loss == "focal":
            focal = keras.losses.BinaryFocalCrossentropy(
                apply_class_balancing=True, alpha=task.focal_alpha, gamma=task.focal_gamma
            )
            term = losses.Term(focal, name="focal")
        else:
            raise ValueError(f"config.task.loss={task.loss!r}: use 'bce', 'weighted' or 'focal'.")
        return term + losses.L2(task.l2)

    def build_metrics(self):
        precision = self.config.task.at_precision
        return [
            keras.metrics.F1Score(average="micro", threshold=0.5, name="f1"),  # one column: F1 of class 1
            keras.metrics.AUC(curve="PR", name="pr_auc"),
            keras.metrics.RecallAtPrecision(precision, name=f"recall_at_p{round(precision * 100)}"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ]


if __name__ == "__main__":
    framework.run(ImbalancedTrainer)
