"""Loss composition: named, weighted terms with distribution-exact reductions.

    loss = losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True)) \
        + losses.L2(1e-4)
    result = loss(y_true, y_pred, model=model)
    result.total, result.terms

See `framework.losses.algebra` for the reduction semantics.
"""

from framework.losses.algebra import BatchTerm, Loss, LossResult, Regularizer, Sum, Term
from framework.losses.reduction import evaluate
from framework.losses.regularizers import L1, L2, ModelLosses, kernels

__all__ = [
    "BatchTerm",
    "L1",
    "L2",
    "Loss",
    "LossResult",
    "ModelLosses",
    "Regularizer",
    "Sum",
    "Term",
    "evaluate",
    "kernels",
]
