"""Digits (scikit-learn's bundled 8x8 images): MLP, cross-entropy + L2.

python experiments/digits.py --config=configs/digits.py --workdir=runs/digits
python experiments/digits.py --config=configs/digits.py:smoke --workdir=/tmp/digits
python scripts/sweep.py experiments/digits.py --config=configs/digits.py --workdir=runs/digits-sweep
"""

from framework.config import choice, defaults, log_uniform, parse_arg, product, uniform


def get_config(arg: str | None = None):
    arg = parse_arg(arg, "configs/digits.py", smoke=False)
    config = defaults()
    config.epochs = 30
    config.optimizer.learning_rate = 3e-3
    config.model.hidden = 128
    config.model.dropout = 0.1
    config.task.l2 = 1e-4
    config.data.eval_fraction = 0.2
    if arg.smoke:
        config.epochs = 3
    return config


def get_sweep(arg: str | None = None):
    """Learning rate x seed (a grid); `--sweep=search`: ranges for `--search=optuna`."""
    if arg == "search":
        return {
            "optimizer.learning_rate": log_uniform(3e-4, 3e-2),
            "model.hidden": choice([32, 64, 128]),
            "model.dropout": uniform(0.0, 0.3),
        }
    rates = [1e-3, 3e-3] if arg == "smoke" else [1e-3, 3e-3, 1e-2]
    return product({"optimizer.learning_rate": rates, "seed": range(2 if arg == "smoke" else 3)})
