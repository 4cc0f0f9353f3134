"""Digits embeddings trained with batch-hard triplet loss; Recall@1/5 on the held-out digits.

python experiments/metric_learning.py --config=configs/metric_learning.py --workdir=runs/metric_learning
python experiments/metric_learning.py --config=configs/metric_learning.py:smoke --workdir=/tmp/metric_learning
"""

from framework.config import defaults, parse_arg


def get_config(arg: str | None = None):
    arg = parse_arg(arg, "configs/metric_learning.py", smoke=False)
    config = defaults()
    config.batch_size = 128  # ~13 examples per digit: every anchor has positives to mine
    config.epochs = 30
    config.data.eval_fraction = 0.2
    config.model.hidden = 128
    config.model.dim = 32
    config.model.normalize = True  # unit-length embeddings: distances in [0, 2]
    config.task.margin = 0.5
    config.task.mining = "batch_hard"
    config.task.l2 = 1e-5
    config.checkpoint.best_metric = "val/recall_at_k/1"
    if arg.smoke:
        config.epochs = 5
    return config
