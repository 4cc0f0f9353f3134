"""GAN on a ring of 8 Gaussians; two optimizers in one custom train_step.

python experiments/gan.py --config=configs/gan.py --workdir=runs/gan
python experiments/gan.py --config=configs/gan.py:smoke --workdir=/tmp/gan
"""

from framework.config import defaults, parse_arg


def get_config(arg: str | None = None):
    arg = parse_arg(arg, "configs/gan.py", smoke=False)
    config = defaults()
    config.epochs = 12
    config.task.d_learning_rate = 1e-3  # discriminator (Adam); the generator's is optimizer.learning_rate
    config.task.beta_1 = 0.5
    config.data.modes = 8
    config.data.radius = 2.0
    config.data.std = 0.05
    config.data.latent = 2  # noise as wide as the data; 16 covers 7 modes with seed 0
    config.data.train_points = 25_600
    config.data.eval_points = 4096
    config.data.mode_radius_stds = 3.0  # a sample within 3 std of a centre belongs to that mode
    config.data.min_mode_share = 0.25 / 8  # a covered mode holds at least a quarter of its fair share
    config.model.width = 128
    config.model.depth = 3
    config.checkpoint.best_metric = "val/modes/covered"
    if arg.smoke:
        config.epochs = 10
        config.data.train_points = 6400
        config.data.eval_points = 1024
    return config
