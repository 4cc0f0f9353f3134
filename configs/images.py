"""ResNet on TFRecord shards of 32x32x3 images (scripts/make_images.py).

python scripts/make_images.py --out data/images --train 20000 --eval 4000 --shards 16
python experiments/images.py --config=configs/images.py --workdir=runs/images
python experiments/images.py --config=configs/images.py:bf16 --workdir=runs/images_bf16

Variants (combinable, e.g. ':smoke,bf16'): 'smoke' (a tiny model on data/images_smoke, written on first use),
'bf16' / 'fp16' (mixed_bfloat16 / mixed_float16), 'sync_bn' (BatchNorm over the global batch).
"""

from framework.config import defaults, parse_arg

PRECISIONS = {"float32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def get_config(arg: str | None = None):
    arg = parse_arg(arg, "configs/images.py", smoke=False, precision=tuple(PRECISIONS), sync_bn=False)
    config = defaults()
    config.batch_size = 128
    config.epochs = 0
    # 4 passes over 20,000 images at batch 128 (156 steps each), evaluated after each,
    # read endlessly by framework.data.shuffled_records (a position of a few KB per checkpoint).
    config.train_steps = 624
    config.eval_every_steps = 156
    config.optimizer.name = "sgd"
    config.optimizer.options.momentum = 0.9
    config.optimizer.options.nesterov = True
    config.optimizer.learning_rate = 0.1
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 150
    config.optimizer.weight_decay = 5e-4
    config.optimizer.ema = 0.99
    config.data.dir = "data/images"
    config.data.make = {"train": 20000, "eval": 4000, "shards": 16}  # scripts/make_images.py's arguments
    config.data.make_on_first_use = False  # True: write the shards when data.dir has none
    config.data.augment = True
    config.data.shuffle_buffer = 4096  # evaluation and epoch-based runs (train_steps = 0)
    config.model.widths = (32, 64, 128, 256)
    config.model.blocks = (1, 1, 2, 1)
    config.model.stem_stride = 2
    config.model.sync_bn = False
    config.task.label_smoothing = 0.1
    config.checkpoint.best_metric = "val/accuracy"
    config.log_every_steps = 50
    config.precision = PRECISIONS[arg.precision]
    config.model.sync_bn = arg.sync_bn
    if arg.smoke:
        config.batch_size = 64
        config.train_steps = 124  # 4 passes over 2,000 images
        config.eval_every_steps = 31
        config.optimizer.name = "adamw"
        config.optimizer.options = {}
        config.optimizer.learning_rate = 5e-3
        config.optimizer.weight_decay = 0.05
        config.optimizer.warmup_steps = 10
        config.optimizer.ema = 0.9
        config.data.dir = "data/images_smoke"
        config.data.make = {"train": 2000, "eval": 400, "shards": 4}
        config.data.make_on_first_use = True  # a few seconds
        config.data.shuffle_buffer = 1024
        config.model.widths = (16, 32, 64)
        config.model.blocks = (1, 1, 1)
        config.model.stem_stride = 1
    return config
