"""The layer losses of a trainer's objective, counted as Keras' `Model.compute_loss` counts them.

    compute_loss(y, y_pred, loss=L, model=M):       # M: self.model unless given; None: none
        objective = L + ModelLosses()  if M has layer losses and L holds no ModelLosses term
                    L                  otherwise (L's own ModelLosses counts them, e.g. with weight 0)
        regularizer terms of L read M

`model.losses` holds the losses of the model's last call. When that call was
the XLA-compiled forward pass (`framework.loop.step_function.compile_forward`), its
tensors live in the compiled function's graph; the forward returns them and
the objective reads them through a view of the model.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from framework.losses import Loss, with_layer_losses


class _LayerLossesOf:
    """A model whose `losses` are given: those its XLA-compiled forward pass returned."""

    def __init__(self, model: keras.Model, found: list):
        self._model, self.losses = model, list(found)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def objective(loss: Loss, model, main_model: keras.Model, forward: Callable) -> tuple[Loss, object]:
    """`loss` completed with `model`'s layer losses, and the model its terms read.

    Args:
      loss: the user's loss.
      model: the model the objective trains, or None (no layer losses).
      main_model: the trainer's model, which `forward` calls.
      forward: the trainer's forward pass (the model, or its compiled call).

    Returns:
      (the loss to evaluate, the model to pass it).
    """
    if model is main_model and hasattr(forward, "layer_losses"):
        found = forward.layer_losses()
        graph = tf.compat.v1.get_default_graph()
        if found and all(getattr(v, "graph", None) is graph for v in found):
            model = _LayerLossesOf(model, found)
    return with_layer_losses(loss, model), model
