"""Loss composition: named, weighted terms with distribution-exact reductions.

    loss = losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True)) \
        + losses.L2(1e-4)
    result = loss(y_true, y_pred, model=model)
    result.total, result.terms

See `framework.losses.reduction` for the reduction semantics and
`framework.losses.library` / `framework.losses.triplet` /
`framework.losses.contrastive` for the losses Keras lacks.

May import: the shared leaves in framework/.
"""

from framework.losses.algebra import BatchTerm, Loss, PredictionTerm, Sum, Term
from framework.losses.contrastive import NTXent
from framework.losses.library import Dice, RankNet, Tversky, WeightedBinaryCrossentropy
from framework.losses.reduction import evaluate
from framework.losses.regularizers import L1, L2, ModelLosses, Regularizer, kernels, with_layer_losses
from framework.losses.result import LossResult
from framework.losses.triplet import Triplet

__all__ = [
    "BatchTerm",
    "Dice",
    "L1",
    "L2",
    "Loss",
    "LossResult",
    "PredictionTerm",
    "ModelLosses",
    "NTXent",
    "RankNet",
    "Regularizer",
    "Sum",
    "Term",
    "Triplet",
    "Tversky",
    "WeightedBinaryCrossentropy",
    "evaluate",
    "kernels",
    "with_layer_losses",
]
