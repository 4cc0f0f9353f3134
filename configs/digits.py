"""Digits (scikit-learn's bundled 8x8 images): MLP, cross-entropy + L2.

python experiments/digits.py --config=configs/digits.py --workdir=runs/digits
python experiments/digits.py --config=configs/digits.py:smoke --workdir=/tmp/digits
"""

from framework.config import defaults


def get_config(arg: str | None = None):
    config = defaults()
    config.batch_size = 64
    config.epochs = 30
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.model.hidden = 128
    config.model.dropout = 0.1
    config.task.l2 = 1e-4
    config.data.eval_fraction = 0.2
    if arg == "smoke":
        config.epochs = 3
    elif arg not in (None, ""):
        raise ValueError(f"configs/digits.py: unknown variant {arg!r}; use '' or 'smoke'.")
    return config
