"""Digits with three heads (class, parity, ink), 30% of class labels missing.

python experiments/multitask.py --config=configs/multitask.py --workdir=runs/multitask
python experiments/multitask.py --config=configs/multitask.py:smoke --workdir=/tmp/multitask
"""

from framework.config import defaults, parse_arg


def get_config(arg: str | None = None):
    arg = parse_arg(arg, "configs/multitask.py", smoke=False)
    config = defaults()
    config.epochs = 30
    config.optimizer.learning_rate = 2e-3
    config.data.eval_fraction = 0.2
    config.data.unlabelled = 0.3  # share of training examples without a class label
    config.model.hidden = 128
    config.model.dropout = 0.1
    config.task.class_weight = 1.0
    config.task.parity_weight = 0.5  # reached after warmup_steps
    config.task.warmup_steps = 200
    config.task.ink_weight = 0.5
    config.task.l2 = 1e-4
    config.checkpoint.best_metric = "val/class/accuracy"
    if arg.smoke:
        config.epochs = 4
        config.task.warmup_steps = 40
    return config
