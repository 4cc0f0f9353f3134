"""Imbalanced breast-cancer classification; one variant per loss.

python experiments/imbalanced.py --config=configs/imbalanced.py:bce --workdir=runs/imbalanced_bce
python experiments/imbalanced.py --config=configs/imbalanced.py:weighted --workdir=runs/imbalanced_weighted
python experiments/imbalanced.py --config=configs/imbalanced.py:focal --workdir=runs/imbalanced_focal
python experiments/imbalanced.py --config=configs/imbalanced.py:smoke --workdir=/tmp/imbalanced
"""

from framework.config import defaults, parse_arg


def get_config(arg: str | None = None):
    arg = parse_arg(arg, "configs/imbalanced.py", loss=("bce", "weighted", "focal"), smoke=False)
    config = defaults()
    config.batch_size = 32
    config.epochs = 60
    config.data.positive_share = 0.1
    config.data.eval_fraction = 0.5
    config.model.hidden = 32
    config.model.dropout = 0.2
    config.task.loss = "weighted" if arg.smoke else arg.loss
    config.task.pos_weight = 3.0  # weighted: each positive counts this many times
    config.task.focal_alpha = 0.75  # focal: weight of the positives (1 - alpha on negatives)
    config.task.focal_gamma = 2.0
    config.task.l2 = 1e-4
    config.task.at_precision = 0.9  # recall reported at this precision
    config.checkpoint.best_metric = "val/pr_auc"
    if arg.smoke:
        config.epochs = 10
    return config
