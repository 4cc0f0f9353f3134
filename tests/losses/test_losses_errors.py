"""Bad input to library losses: each error names the term (and head), at trace time where possible.

tests/test_errors.py covers the generic cases (a head the model lacks, a
per-example shape mismatch, a schedule returning a vector) for `Term`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import losses

from toys import ArrayTrainer, config


def _traced(loss, y, pred, weight=None):
    """Evaluates `loss` inside a tf.function, as the train step does."""
    return tf.function(lambda: loss(y, pred, sample_weight=weight).total)()


def seg_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    return keras.Model(inputs, {"seg": keras.layers.Dense(4)(inputs), "emb": keras.layers.Dense(2)(inputs)})


def test_class_ids_fed_to_dice_fail_at_trace_time_in_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    data = (x, {"seg": rng.integers(0, 4, 32).astype("int32"), "emb": rng.integers(0, 2, 32)})
    loss = losses.Dice(from_logits=True).on("seg") + losses.Triplet().on("emb")
    trainer = ArrayTrainer(config(), data=data, model_fn=seg_model, loss=loss)
    with pytest.raises(
        ValueError,
        match=r"Loss term 'seg' on head 'seg' expects labels of shape \(None, 4\) .*got \(None,\)\. "
        r"Integer labels of another shape look like class ids",
    ):
        trainer.fit()


def test_integer_labels_other_than_0_1_fail_at_run_time():
    y = np.array([[0, 1, 2, 1]], "int32")
    pred = np.full((1, 4), 0.5, "float32")
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"Loss term .*mask.*: integer labels must be 0 or 1"
    ):
        _traced(losses.WeightedBinaryCrossentropy(2.0, name="mask"), y, pred)
    assert np.isfinite(float(_traced(losses.Dice(), y.clip(0, 1), pred)))  # 0/1 integers are fine


@pytest.mark.parametrize(
    "loss, y_shape, pred_shape, message",
    [
        (
            losses.Dice().on("seg"),
            (8, 3),
            (8, 4),
            r"Loss term 'seg' on head 'seg' expects labels of shape \(8, 4\)",
        ),
        (losses.Tversky(name="tv"), (8, 4, 1), (8, 4), r"Loss term 'tv' expects labels of shape \(8, 4\)"),
        (
            losses.RankNet(),
            (8, 5),
            (8, 6),
            r"Loss term 'rank_net' expects relevance labels and scores of the same shape \[batch, list_size\]; "
            r"got labels \(8, 5\) and scores \(8, 6\)",
        ),
        (
            losses.Triplet().on("emb"),
            (8, 3),
            (8, 2),
            r"Loss term 'emb' on head 'emb' expects integer class ids of shape \[batch\] or \[batch, 1\], "
            r"got labels of shape \(8, 3\)",
        ),
        (
            losses.Triplet(),
            (8,),
            (8, 2, 2),
            r"Loss term 'triplet' expects embeddings of shape \[batch, dim\]",
        ),
    ],
)
def test_shape_errors_name_the_term_the_head_and_both_shapes(loss, y_shape, pred_shape, message):
    head = loss.flat_terms()[0].head
    y, pred = np.zeros(y_shape, "float32"), np.zeros(pred_shape, "float32")
    if head:
        y, pred = {head: y}, {head: pred}
    with pytest.raises(ValueError, match=message):
        _traced(loss, y, pred)


def test_unknown_head_names_the_term_and_the_heads():
    y = {"seg": np.zeros((4, 2), "float32")}
    with pytest.raises(
        KeyError, match=r"Loss term 'mask' reads head 'mask', but the model output has heads \['seg'\]"
    ):
        _traced(losses.Dice().on("mask"), y, y)


def test_ranknet_rejects_per_item_weights():
    rel = np.zeros((4, 3), "float32")
    with pytest.raises(ValueError, match=r"Loss term 'rank_net' takes one sample weight per list"):
        _traced(losses.RankNet(), rel, rel, weight=np.ones((4, 3), "float32"))


def test_a_library_term_schedule_returning_a_vector_names_the_term():
    loss = losses.Dice(weight=lambda step: tf.ones([3]), name="overlap")
    y = np.zeros((4, 2), "float32")
    with pytest.raises(ValueError, match=r"Loss term 'overlap': its weight schedule returned shape \(3,\)"):
        _traced(loss, y, y)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: losses.WeightedBinaryCrossentropy(), "give exactly one of pos_weight= or class_weights="),
        (lambda: losses.WeightedBinaryCrossentropy(2.0, class_weights=[1, 2]), "exactly one of"),
        (lambda: losses.WeightedBinaryCrossentropy(class_weights=[1.0]), r"class_weights must be \[w0, w1\]"),
        (lambda: losses.Dice(smooth=-1), "Dice: smooth must be >= 0"),
        (lambda: losses.Tversky(-0.1, 0.5), "Tversky: alpha and beta must be >= 0"),
        (
            lambda: losses.Triplet(mining="hard"),
            r"Triplet: mining must be one of \('batch_all', 'batch_hard'\)",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()
