"""Optimization: gradient updates, the optimizer from config, precision, per-replica randomness.

Owns: `updates` (every replica applies the same reduced gradient, or none does),
`optimizer_builder` (`config.optimizer` -> a Keras optimizer), `precision` (dtype policies, loss
scaling), `randomness` (one random stream per replica), `layer_losses` (a model's layer losses in
the objective), and `keras_internals`, the one module that touches Keras optimizers' private parts.

May import: config, losses, and the shared leaves in framework/.
"""
