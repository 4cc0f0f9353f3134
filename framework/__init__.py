"""Custom training loops for TensorFlow 2 and Keras 3.

import framework
from framework import losses

class MyTrainer(framework.Trainer):
    def build_model(self): ...
    def build_train_dataset(self, input_context): ...
    def build_loss(self): ...

if __name__ == "__main__":
    framework.run(MyTrainer)

The public names are `__all__`, each imported on first use: `import framework`
(and `import framework.sweeps`, `framework.sweeps.results`, `framework.config`) starts
no TensorFlow; `framework.Trainer` or `framework.losses` does.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # orbax imports JAX: keep it off accelerators

from framework.outputs import console  # noqa: E402 - absl only

console.quiet_libraries()

if TYPE_CHECKING:
    from framework import config, data, distribute, losses, metrics
    from framework.launch.entry_point import run
    from framework.log_values import Weighted
    from framework.loop.callbacks import Periodic
    from framework.optim.keras_internals import ema_weights
    from framework.trainer.trainer import StepLoss, Trainer

# Public name -> (module, attribute); None: the module itself.
_PUBLIC = {
    "Periodic": ("framework.loop.callbacks", "Periodic"),
    "StepLoss": ("framework.trainer.trainer", "StepLoss"),
    "Trainer": ("framework.trainer.trainer", "Trainer"),
    "Weighted": ("framework.log_values", "Weighted"),
    "config": ("framework.config", None),
    "data": ("framework.data", None),
    "distribute": ("framework.distribute", None),
    "ema_weights": ("framework.optim.keras_internals", "ema_weights"),
    "losses": ("framework.losses", None),
    "metrics": ("framework.metrics", None),
    "run": ("framework.launch.entry_point", "run"),
}

__all__ = [
    "Periodic",
    "StepLoss",
    "Trainer",
    "Weighted",
    "config",
    "data",
    "distribute",
    "ema_weights",
    "losses",
    "metrics",
    "run",
]


def __getattr__(name: str) -> Any:
    """Imports a public name on first use (PEP 562), so that TF-free parts import without TensorFlow."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'framework' has no attribute {name!r}")
    module_name, attribute = _PUBLIC[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
