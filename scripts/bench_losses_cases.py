"""The contestants of scripts/bench_losses.py: tutorial code, hand-vectorized forms, Keras, ours.

Tutorial code is kept as the tutorials wrote it, except where it no longer runs:
`tf.keras.backend.binary_crossentropy` is gone in Keras 3 (`keras.ops`
has it), and the tutorials' L1 term `tf.reduce_sum(tf.abs(model.trainable_variables))`
fails on a list of differently shaped variables (shown per variable here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from framework import losses

NOTES = (
    "Per group, every contestant computes the same value (checked) and its gradient. "
    "*naive* is the tutorials' form run eagerly (Python loops where the tutorial loops); *vectorized* "
    "is the same loss written with whole-tensor ops; *Keras* the built-in where one exists; "
    "**ours** is `framework.losses` evaluated in full (term, reduction, weights). "
    "Batches: L2 64×16; norm 256×64; Huber and focal 1024×16; weighted BCE 512×64; "
    "Dice and Tversky 16×128×128×1; triplet 128 embeddings of 64 (16 classes); RankNet 64 lists "
    "of 20; regularizers over the kernels of a 784-512-512-10 MLP.\n\n"
    "What holds from run to run (single ratios move by up to ~20% between runs, e.g. Triplet "
    "batch_all measured 0.93-1.3× over five runs): the tutorials' Python loops cost thousands of "
    "times the vectorized loss, and AutoGraph turns them into a `tf.while_loop` that is still "
    "~100× slower; the tutorials' redundant norm costs nothing once compiled (both grappler and XLA "
    "deduplicate it), only eagerly; our full term costs ~0.3-2 ms more per call than a bare "
    "function when run eagerly (Python and small ops), nothing measurable once compiled, which "
    "the Trainer always does; XLA on CPU is not always the fastest (Dice's large reductions run "
    "faster as plain `tf.function`). Ratios are within one table and one run; the machine is "
    "shared, so absolute times drift."
)

EAGER_ONLY = ("eager",)
ALL = ("eager", "tf.function", "xla")
COMPILED = ("tf.function", "xla")


@dataclasses.dataclass
class Group:
    name: str
    data: tuple
    implementations: list[tuple[str, Callable, tuple, bool]]  # label, fn(y, p), modes, ours
    wrt: list | None = None
    rtol: float = 1e-4


def _total(loss: losses.Loss, scale: float = 1.0) -> Callable:
    return lambda y, p: scale * loss(y, p).total


# ---- tutorial code, verbatim (modulo removed APIs) --------------------------------------


def seed_l2_loops(y_true, y_pred):
    loss = 0.0
    for i in range(tf.shape(y_true)[0]):
        for j in range(tf.shape(y_true)[1]):
            diff = y_true[i, j] - y_pred[i, j]
            loss += diff * diff
    return loss


def seed_l2_vectorized(y_true, y_pred):
    diff = y_true - y_pred
    squared_diff = tf.square(diff)
    return tf.reduce_sum(squared_diff)


def seed_loss_with_redundancy(y_true, y_pred):
    distance_a = tf.norm(y_true - y_pred, ord=2)
    distance_b = tf.norm(y_true - y_pred, ord=2)
    return distance_a + distance_b


def seed_loss_without_redundancy(y_true, y_pred):
    distance = tf.norm(y_true - y_pred, ord=2)
    return 2 * distance


def seed_huber(y_true, y_pred, delta=1.0):
    error = y_true - y_pred
    abs_error = tf.abs(error)
    quadratic = tf.minimum(abs_error, delta)
    linear = abs_error - quadratic
    return tf.reduce_mean(0.5 * quadratic**2 + delta * linear)


def seed_focal(y_true, logits, alpha=0.25, gamma=2.0):
    """The tutorials' `-alpha * (1 - p_t)**gamma * log(p_t)`, from clipped probabilities."""
    p = tf.clip_by_value(tf.sigmoid(logits), 1e-7, 1 - 1e-7)
    p_t = y_true * p + (1 - y_true) * (1 - p)
    alpha_t = y_true * alpha + (1 - y_true) * (1 - alpha)
    return tf.reduce_mean(-alpha_t * (1 - p_t) ** gamma * tf.math.log(p_t))


def seed_weighted_bce(y_true, y_pred, class_weights=(0.1, 0.9)):
    weights = y_true * class_weights[1] + (1 - y_true) * class_weights[0]
    loss = keras.ops.binary_crossentropy(y_true, y_pred)  # was tf.keras.backend.binary_crossentropy
    return tf.reduce_mean(weights * loss)


def seed_dice(y_true, y_pred, smooth=1.0):
    y_true_f = tf.reshape(y_true, [-1])
    y_pred_f = tf.reshape(y_pred, [-1])
    intersection = tf.reduce_sum(y_true_f * y_pred_f)
    score = (2.0 * intersection + smooth) / (tf.reduce_sum(y_true_f) + tf.reduce_sum(y_pred_f) + smooth)
    return 1 - score


# ---- hand-written references for the losses the tutorials only name ---------------------


def tversky(y, p, alpha=0.3, beta=0.7, smooth=1.0):
    tp = tf.reduce_sum(y * p)
    fp = tf.reduce_sum((1 - y) * p)
    fn = tf.reduce_sum(y * (1 - p))
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def _distances(emb):
    sq = tf.reduce_sum(emb**2, 1, keepdims=True) - 2.0 * tf.matmul(emb, emb, transpose_b=True)
    sq = tf.maximum(sq + tf.reduce_sum(emb**2, 1)[None, :], 0.0)
    zero = sq <= 0.0
    return tf.where(zero, 0.0, tf.sqrt(tf.where(zero, 1.0, sq)))


def _masks(labels):
    same = labels[:, None] == labels[None, :]
    return same & ~tf.eye(tf.shape(labels)[0], dtype=tf.bool), ~same


def triplet_hard(labels, emb, margin=0.5):
    d = _distances(emb)
    pos, neg = _masks(labels)
    hardest = tf.reduce_max(tf.where(pos, d, 0.0), 1) - tf.reduce_min(tf.where(neg, d, tf.float32.max), 1)
    valid = tf.reduce_any(pos, 1) & tf.reduce_any(neg, 1)
    return tf.reduce_sum(tf.where(valid, tf.nn.relu(hardest + margin), 0.0)) / tf.reduce_sum(
        tf.cast(valid, tf.float32)
    )


def triplet_all(labels, emb, margin=0.5):
    d = _distances(emb)
    pos, neg = _masks(labels)
    t = tf.where(pos[:, :, None] & neg[:, None, :], tf.nn.relu(d[:, :, None] - d[:, None, :] + margin), 0.0)
    return tf.reduce_sum(t) / tf.reduce_sum(tf.cast(t > 0, tf.float32))


def naive_triplet(labels, emb, margin=0.5, mining="batch_hard"):
    """One anchor at a time, in Python."""
    total, count = 0.0, 0.0
    index = tf.range(len(labels))
    for a in range(len(labels)):
        same = labels == labels[a]
        d_pos = tf.norm(tf.boolean_mask(emb, same & (index != a)) - emb[a], axis=1)
        d_neg = tf.norm(tf.boolean_mask(emb, ~same) - emb[a], axis=1)
        if len(d_pos) == 0 or len(d_neg) == 0:
            continue
        if mining == "batch_hard":
            total += tf.nn.relu(tf.reduce_max(d_pos) - tf.reduce_min(d_neg) + margin)
            count += 1.0
        else:
            t = tf.nn.relu(d_pos[:, None] - d_neg[None, :] + margin)
            total += tf.reduce_sum(t)
            count += tf.reduce_sum(tf.cast(t > 0, tf.float32))
    return total / count


def ranknet(rel, scores):
    pairs = rel[:, :, None] > rel[:, None, :]
    loss = tf.where(pairs, tf.math.softplus(scores[:, None, :] - scores[:, :, None]), 0.0)
    count = tf.reduce_sum(tf.cast(pairs, tf.float32), [1, 2])
    per_list = tf.math.divide_no_nan(tf.reduce_sum(loss, [1, 2]), count)
    valid = tf.cast(count > 0, tf.float32)
    return tf.reduce_sum(per_list * valid) / tf.reduce_sum(valid)


def naive_ranknet(rel, scores):
    """One list at a time, in Python."""
    total, lists = 0.0, 0.0
    for b in range(len(rel)):
        pairs = rel[b][:, None] > rel[b][None, :]
        if not bool(tf.reduce_any(pairs)):
            continue
        diff = scores[b][:, None] - scores[b][None, :]
        total += tf.reduce_mean(tf.boolean_mask(tf.math.softplus(-diff), pairs))
        lists += 1.0
    return total / lists


# ---- groups ----------------------------------------------------------------------------------


def _binary(rng, shape, *, probabilities=False):
    y = (rng.uniform(size=shape) > 0.7).astype("float32")
    p = rng.normal(0, 2, shape).astype("float32")
    p = 1 / (1 + np.exp(-p)) if probabilities else p
    return tf.constant(y), tf.constant(p.astype("float32"))


def groups(*, short: bool) -> list[Group]:
    rng = np.random.default_rng(0)
    s = short
    out = []

    y, p = (tf.constant(rng.normal(size=(4, 3) if s else (64, 16)).astype("float32")) for _ in range(2))
    size = float(np.prod(y.shape))
    out.append(
        Group(
            "L2 sum (seed loops)",
            (y, p),
            [
                ("naive loops", seed_l2_loops, ("eager", "tf.function"), False),
                ("vectorized", seed_l2_vectorized, ALL, False),
                (
                    "Keras MSE(sum)·D",
                    lambda y, p: keras.losses.MeanSquaredError(reduction="sum")(y, p) * y.shape[1],
                    COMPILED,
                    False,
                ),
                ("Term(square)·size", _total(losses.Term(lambda y, p: tf.square(y - p)), size), ALL, True),
            ],
        )
    )
    y, p = (tf.constant(rng.normal(size=(16, 8) if s else (256, 64)).astype("float32")) for _ in range(2))
    out.append(
        Group(
            "norm, seed redundancy",
            (y, p),
            [
                ("norm twice", seed_loss_with_redundancy, ALL, False),
                ("norm once", seed_loss_without_redundancy, ALL, False),
            ],
        )
    )
    y, p = (tf.constant(rng.normal(0, 2, (16, 4) if s else (1024, 16)).astype("float32")) for _ in range(2))
    huber = keras.losses.Huber(delta=1.0)
    out.append(
        Group(
            "Huber",
            (y, p),
            [
                ("seed", seed_huber, ALL, False),
                ("Keras Huber", huber, COMPILED, False),
                ("Term(Keras Huber)", _total(losses.Term(huber)), ALL, True),
            ],
        )
    )
    y, p = _binary(rng, (16, 4) if s else (1024, 16))
    focal = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.25, gamma=2.0, from_logits=True
    )
    out.append(
        Group(
            "binary focal",
            (y, p),
            [
                ("seed formula", seed_focal, ALL, False),
                ("Keras BinaryFocal", focal, COMPILED, False),
                ("Term(Keras BinaryFocal)", _total(losses.Term(focal)), ALL, True),
            ],
        )
    )
    y, p = _binary(rng, (16, 8) if s else (512, 64))
    out.append(
        Group(
            "weighted BCE, pos_weight, logits",
            (y, p),
            [
                (
                    "tf.nn.weighted_ce",
                    lambda y, p: tf.reduce_mean(tf.nn.weighted_cross_entropy_with_logits(y, p, 3.0)),
                    ALL,
                    False,
                ),
                (
                    "WeightedBinaryCrossentropy",
                    _total(losses.WeightedBinaryCrossentropy(3.0, from_logits=True)),
                    ALL,
                    True,
                ),
            ],
        )
    )
    y, p = _binary(rng, (16, 8) if s else (512, 64), probabilities=True)
    out.append(
        Group(
            "weighted BCE, class weights",
            (y, p),
            [
                ("seed", seed_weighted_bce, ALL, False),
                (
                    "WeightedBinaryCrossentropy",
                    _total(losses.WeightedBinaryCrossentropy(class_weights=[0.1, 0.9])),
                    ALL,
                    True,
                ),
            ],
        )
    )
    y, p = _binary(rng, (2, 8, 8, 1) if s else (16, 128, 128, 1), probabilities=True)
    out.append(
        Group(
            "Dice",
            (y, p),
            [
                ("seed", seed_dice, ALL, False),
                ("Keras Dice", keras.losses.Dice(), COMPILED, False),
                ("Dice", _total(losses.Dice(smooth=1.0)), ALL, True),
            ],
            rtol=5e-2 if s else 1e-3,  # Keras: no smoothing, 1e-7 in the denominator
        )
    )
    out.append(
        Group(
            "Tversky",
            (y, p),
            [
                ("vectorized", tversky, ALL, False),
                ("Keras Tversky(β, α)", keras.losses.Tversky(alpha=0.7, beta=0.3), COMPILED, False),
                ("Tversky", _total(losses.Tversky(0.3, 0.7)), ALL, True),
            ],
            rtol=5e-2 if s else 1e-3,
        )
    )
    n, dim, classes = (8, 4, 2) if s else (128, 64, 16)
    labels = tf.constant(rng.integers(0, classes, n).astype("int32"))
    emb = tf.constant(rng.normal(size=(n, dim)).astype("float32"))
    for mining, vectorized in (("batch_hard", triplet_hard), ("batch_all", triplet_all)):
        out.append(
            Group(
                f"Triplet {mining}",
                (labels, emb),
                [
                    (
                        "naive per anchor",
                        lambda y, p, m=mining: naive_triplet(y, p, 0.5, m),
                        EAGER_ONLY,
                        False,
                    ),
                    ("vectorized", vectorized, ALL, False),
                    ("Triplet", _total(losses.Triplet(0.5, mining=mining)), ALL, True),
                ],
            )
        )
    rel = tf.constant(rng.integers(0, 4, (4, 5) if s else (64, 20)).astype("float32"))
    scores = tf.constant(rng.normal(size=rel.shape).astype("float32"))
    out.append(
        Group(
            "RankNet",
            (rel, scores),
            [
                ("naive per list", naive_ranknet, EAGER_ONLY, False),
                ("vectorized", ranknet, ALL, False),
                ("RankNet", _total(losses.RankNet()), ALL, True),
            ],
        )
    )
    out.extend(_regularizers(short))
    return out


def _regularizers(short: bool) -> list[Group]:
    keras.utils.set_random_seed(0)
    width = 32 if short else 512
    model = keras.Sequential(
        [
            keras.Input((64 if short else 784,)),
            keras.layers.Dense(width),
            keras.layers.Dense(width),
            keras.layers.Dense(10),
        ]
    )
    kernels = [v for v in model.trainable_variables if v.name == "kernel"]
    dummy = (tf.zeros([1]), tf.zeros([1]))
    out = []
    for name, ours, penalty, keras_reg in (
        ("L2", losses.L2(1e-4), tf.square, keras.regularizers.L2(1e-4)),
        ("L1", losses.L1(1e-4), tf.abs, keras.regularizers.L1(1e-4)),
    ):
        out.append(
            Group(
                f"{name} regularizer",
                dummy,
                [
                    (
                        "per-variable sum",
                        lambda y, p, f=penalty: 1e-4 * tf.add_n([tf.reduce_sum(f(v)) for v in kernels]),
                        ALL,
                        False,
                    ),
                    (
                        f"Keras {name}",
                        lambda y, p, r=keras_reg: tf.add_n([r(v) for v in kernels]),
                        COMPILED,
                        False,
                    ),
                    (name, lambda y, p, r=ours: r(None, None, model=model).total, ALL, True),
                ],
                wrt=kernels,
            )
        )
    return out
