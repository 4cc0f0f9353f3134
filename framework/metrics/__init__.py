"""Metrics: Keras metric objects, plus what Keras lacks for retrieval and ranking.

Keras' own metrics (`F1Score`, `AUC`, `BinaryIoU`, `Precision`, `Recall`, ...)
are used as they are. This package adds `RecallAtK` and `NDCG`, and the
helpers the trainer uses to collect, update, read and reset metrics.

May import: the shared leaves in framework/.
"""

from framework.metrics.handling import Pairs, build, collect, name, read, reset, results, update
from framework.metrics.library import NDCG, RecallAtK

__all__ = ["NDCG", "Pairs", "RecallAtK", "build", "collect", "name", "read", "reset", "results", "update"]
