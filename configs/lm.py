"""Byte-level Transformer LM on the Python standard library's sources.

python experiments/lm.py --config=configs/lm.py --workdir=runs/lm
python experiments/lm.py --config=configs/lm.py:smoke --workdir=/tmp/lm
"""

from framework.config import defaults, parse_arg


def get_config(arg: str | None = None):
    arg = parse_arg(arg, "configs/lm.py", smoke=False)
    config = defaults()
    config.batch_size = 16  # sequences per micro-batch; an update sees grad_accum_steps of them
    config.grad_accum_steps = 2
    config.train_steps = 800  # optimizer updates; each sees grad_accum_steps micro-batches
    config.eval_every_steps = 200
    config.log_every_steps = 100  # micro-batches
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 60  # updates
    config.optimizer.alpha = 0.1
    config.optimizer.weight_decay = 0.01
    config.optimizer.global_clipnorm = 1.0
    config.optimizer.options.beta_2 = 0.98
    config.model.seq_len = 128
    config.model.dim = 160
    config.model.layers = 4
    config.model.heads = 4
    config.model.dropout = 0.0
    config.data.root = ""  # "": sysconfig.get_paths()["stdlib"]
    config.data.eval_fraction = 0.05
    config.data.max_train_bytes = 8_000_000
    config.data.max_eval_bytes = 200_000
    config.task.prompt = "def __init__(self"
    config.task.sample_bytes = 64
    config.checkpoint.best_metric = "val/bits_per_byte"
    config.checkpoint.best_mode = "min"
    if arg.smoke:
        config.batch_size = 16
        config.train_steps = 30
        config.eval_every_steps = 15
        config.log_every_steps = 20
        config.optimizer.learning_rate = 3e-3
        config.optimizer.warmup_steps = 5
        config.model.seq_len = 64
        config.model.dim = 64
        config.model.layers = 2
        config.data.max_train_bytes = 400_000
        config.data.max_eval_bytes = 16_000
        config.task.sample_bytes = 16
    return config
