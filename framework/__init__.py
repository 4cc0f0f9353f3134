"""Custom training loops for TensorFlow 2 and Keras 3.

import framework
from framework import losses

class MyTrainer(framework.Trainer):
    def build_model(self): ...
    def build_train_dataset(self, input_context): ...
    def build_loss(self): ...

if __name__ == "__main__":
    framework.run(MyTrainer)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # orbax imports JAX: keep it off accelerators

from framework import config, console, distribute, losses, metrics  # noqa: E402
from framework.callbacks import Periodic  # noqa: E402
from framework.launch import run  # noqa: E402
from framework.log_values import Weighted  # noqa: E402
from framework.trainer import StepLoss, Trainer  # noqa: E402

console.quiet_libraries()

__all__ = ["Periodic", "StepLoss", "Trainer", "Weighted", "config", "distribute", "losses", "metrics", "run"]
