"""Digits embeddings trained with batch-hard triplet loss; Recall@1/5 on the held-out digits.

python experiments/metric_learning.py --config=configs/metric_learning.py --workdir=runs/metric_learning
python experiments/metric_learning.py --config=configs/metric_learning.py:smoke --workdir=/tmp/metric_learning
"""

from framework.config import defaults

VARIANTS = ("", "smoke")


def get_config(arg: str = ""):
    if arg not in VARIANTS:
        raise ValueError(f"configs/metric_learning.py: unknown variant {arg!r}; valid: '' (full), 'smoke'.")
    config = defaults()
    config.batch_size = 128  # ~13 examples per digit: every anchor has positives to mine
    config.epochs = 30
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.data.eval_fraction = 0.2
    config.model.hidden = 128
    config.model.dim = 32
    config.model.normalize = True  # unit-length embeddings: distances in [0, 2]
    config.task.margin = 0.5
    config.task.mining = "batch_hard"
    config.task.l2 = 1e-5
    config.checkpoint.best_metric = "val/recall_at_k/1"
    if arg == "smoke":
        config.epochs = 5
    return config
