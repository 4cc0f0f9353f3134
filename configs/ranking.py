"""Generated learning-to-rank lists; RankNet; NDCG@5 against random scores.

python experiments/ranking.py --config=configs/ranking.py --workdir=runs/ranking
python experiments/ranking.py --config=configs/ranking.py:smoke --workdir=/tmp/ranking
"""

from framework.config import defaults, parse_arg


def get_config(arg: str | None = None):
    arg = parse_arg(arg, "configs/ranking.py", smoke=False)
    config = defaults()
    config.batch_size = 64  # lists per global batch
    config.epochs = 20
    config.data.train_lists = 2000
    config.data.eval_lists = 500
    config.data.list_size = 20
    config.data.features = 10
    config.data.noise = 0.5
    config.model.hidden = 64
    config.task.k = 5
    config.task.l2 = 1e-5
    config.checkpoint.best_metric = "val/ndcg_5"
    if arg.smoke:
        config.epochs = 3
        config.data.train_lists = 600
        config.data.eval_lists = 200
    return config
