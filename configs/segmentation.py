"""Circle segmentation on generated shapes: small U-Net, Dice + BCE.

python experiments/segmentation.py --config=configs/segmentation.py --workdir=runs/segmentation
python experiments/segmentation.py --config=configs/segmentation.py:smoke --workdir=/tmp/segmentation
"""

from framework.config import defaults, parse_arg


def get_config(arg: str | None = None):
    arg = parse_arg(arg, "configs/segmentation.py", smoke=False)
    config = defaults()
    config.batch_size = 32
    config.optimizer.learning_rate = 2e-3
    config.data.train_images = 2000
    config.data.eval_images = 400
    config.data.noise = 0.2
    config.model.width = 16
    config.task.dice_weight = 1.0
    config.task.bce_weight = 1.0
    config.checkpoint.best_metric = "val/iou"
    if arg.smoke:
        config.epochs = 4
        config.batch_size = 16
        config.optimizer.learning_rate = 3e-3
        config.data.train_images = 960
        config.data.eval_images = 96
        config.model.width = 8
    return config
