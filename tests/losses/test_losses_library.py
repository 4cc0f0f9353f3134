"""The loss library on one device: values and gradients against independent numpy references."""

import keras
import losses_reference as ref
import numpy as np
import pytest
import tensorflow as tf

from framework import losses


def _rng(seed=0):
    return np.random.default_rng(seed)


def _binary(shape=(6, 5), seed=0):
    rng = _rng(seed)
    y = (rng.uniform(size=shape) > 0.6).astype("float32")
    logits = rng.normal(0, 2, size=shape).astype("float32")
    return y, logits


def _embeddings(n=12, dim=4, classes=3, seed=0):
    rng = _rng(seed)
    return rng.integers(0, classes, n).astype("int64"), rng.normal(size=(n, dim)).astype("float32")


def _lists(batch=6, size=5, seed=0):
    rng = _rng(seed)
    rel = rng.integers(0, 3, (batch, size)).astype("float32")
    rel[1] = 1.0  # all equal: no valid pair
    rel[2, 3:] = -1.0  # padding
    return rel, rng.normal(size=(batch, size)).astype("float32")


def _value(loss, y, pred, weight=None):
    return float(loss(y, pred, sample_weight=weight).total)


# ---- weighted binary cross-entropy ---------------------------------------------


@pytest.mark.parametrize("pos_weight", [0.3, 3.0])
def test_weighted_bce_pos_weight_from_logits_matches_tf_nn_and_numpy(pos_weight):
    y, logits = _binary()
    loss = losses.WeightedBinaryCrossentropy(pos_weight, from_logits=True)
    expected = float(tf.reduce_mean(tf.nn.weighted_cross_entropy_with_logits(y, logits, pos_weight)))
    assert _value(loss, y, logits) == pytest.approx(expected, rel=1e-6)
    assert _value(loss, y, logits) == pytest.approx(
        ref.weighted_bce(y, logits, pos_weight=pos_weight, from_logits=True), rel=1e-5
    )


def test_weighted_bce_probabilities_and_sample_weights_match_numpy():
    y, logits = _binary()
    p = ref.sigmoid(logits).astype("float32")
    w = _rng(1).uniform(0, 2, len(y)).astype("float32")
    loss = losses.WeightedBinaryCrossentropy(2.5)
    expected = ref.weighted_bce(y, p, pos_weight=2.5, weight=w)
    assert _value(loss, y, p, w) == pytest.approx(expected, rel=1e-5)


def test_weighted_bce_class_weights_is_the_seeds_form():
    y, logits = _binary()
    y[0] = 0.3  # soft labels: where the two forms differ
    p = ref.sigmoid(logits).astype("float32")
    cw = losses.WeightedBinaryCrossentropy(class_weights=[0.1, 0.9])
    assert _value(cw, y, p) == pytest.approx(ref.weighted_bce(y, p, class_weights=(0.1, 0.9)), rel=1e-5)
    from_logits = losses.WeightedBinaryCrossentropy(class_weights=[0.1, 0.9], from_logits=True)
    assert _value(from_logits, y, logits) == pytest.approx(_value(cw, y, p), rel=1e-5)
    plain = losses.WeightedBinaryCrossentropy(class_weights=[1.0, 1.0])
    assert _value(plain, y, p) == pytest.approx(float(keras.losses.BinaryCrossentropy()(y, p)), rel=1e-6)


def test_weighted_bce_is_stable_for_extreme_logits():
    y = np.array([[1.0, 0.0, 1.0, 0.0]], "float32")
    logits = tf.constant([[200.0, -200.0, -200.0, 200.0]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        total = losses.WeightedBinaryCrossentropy(2.0, from_logits=True)(y, logits).total
    grad = tape.gradient(total, logits)
    assert float(total) == pytest.approx((2.0 * 200 + 200) / 4, rel=1e-6)
    np.testing.assert_allclose(grad.numpy(), [[0.0, 0.0, -0.5, 0.25]], atol=1e-7)


# ---- Dice and Tversky ------------------------------------------------------------


@pytest.mark.parametrize("weight", [None, "example", "element"])
def test_dice_matches_numpy_with_example_and_element_weights(weight):
    y, logits = _binary((4, 3, 3, 1))
    rng = _rng(2)
    w = {None: None, "example": rng.uniform(0, 2, 4), "element": rng.uniform(0, 2, (4, 3, 3))}[weight]
    w = None if w is None else w.astype("float32")
    loss = losses.Dice(smooth=0.5, from_logits=True)
    assert _value(loss, y, logits, w) == pytest.approx(
        ref.dice(y, logits, smooth=0.5, from_logits=True, weight=w), rel=1e-5
    )


def test_dice_and_tversky_match_keras_on_one_device():
    y, logits = _binary((4, 8))
    p = ref.sigmoid(logits).astype("float32")
    # Keras: no smoothing but 1e-7 in the denominator; Tversky's alpha weighs false negatives.
    assert _value(losses.Dice(smooth=0), y, p) == pytest.approx(float(keras.losses.Dice()(y, p)), rel=1e-5)
    ours = _value(losses.Tversky(0.3, 0.7, smooth=0), y, p)
    assert ours == pytest.approx(float(keras.losses.Tversky(alpha=0.7, beta=0.3)(y, p)), rel=1e-5)
    assert ours != pytest.approx(float(keras.losses.Tversky(alpha=0.3, beta=0.7)(y, p)), rel=1e-3)


def test_tversky_matches_numpy():
    y, logits = _binary((5, 6), seed=3)
    w = _rng(4).uniform(0, 1, 5).astype("float32")
    loss = losses.Tversky(0.2, 0.8, smooth=1.0, from_logits=True)
    expected = ref.tversky(y, logits, alpha=0.2, beta=0.8, smooth=1.0, from_logits=True, weight=w)
    assert _value(loss, y, logits, w) == pytest.approx(expected, rel=1e-5)


def test_dice_accepts_labels_without_the_trailing_unit_axis_and_integer_masks():
    y, logits = _binary((6, 1))
    a = _value(losses.Dice(from_logits=True), y[:, 0].astype("int32"), logits)
    assert a == pytest.approx(ref.dice(y, logits, smooth=1.0, from_logits=True), rel=1e-5)


# ---- triplet -------------------------------------------------------------------------


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_matches_numpy_loops(mining):
    labels, emb = _embeddings()
    w = _rng(5).uniform(0.5, 2, len(labels)).astype("float32")
    w[3] = 0.0  # excluded as anchor, positive and negative
    loss = losses.Triplet(margin=0.7, mining=mining)
    assert _value(loss, labels, emb) == pytest.approx(
        ref.triplet(labels, emb, margin=0.7, mining=mining), rel=1e-5
    )
    assert _value(loss, labels, emb, w) == pytest.approx(
        ref.triplet(labels, emb, margin=0.7, mining=mining, weight=w), rel=1e-5
    )


def test_triplet_gradient_is_finite_for_duplicate_embeddings():
    labels = np.array([0, 0, 1, 1])
    emb = tf.constant([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 0.0]])
    for mining in ("batch_hard", "batch_all"):
        with tf.GradientTape() as tape:
            tape.watch(emb)
            total = losses.Triplet(margin=1.0, mining=mining)(labels, emb).total
        assert np.all(np.isfinite(tape.gradient(total, emb).numpy())), mining
        assert float(total) == pytest.approx(ref.triplet(labels, emb.numpy(), margin=1.0, mining=mining))


def test_triplet_keeps_large_int64_ids_distinct():
    labels = np.array([2**40, 2**40 + 1, 2**40, 2**40 + 1], "int64")  # equal as float32
    emb = np.array([[0.0], [0.1], [1.0], [1.2]], "float32")
    loss = losses.Triplet(margin=1.0)
    assert _value(loss, labels, emb) == pytest.approx(
        ref.triplet(labels, emb, margin=1.0, mining="batch_hard")
    )


# ---- RankNet -----------------------------------------------------------------------


def test_ranknet_matches_numpy_and_skips_lists_without_pairs():
    rel, scores = _lists()
    loss = losses.RankNet()
    assert _value(loss, rel, scores) == pytest.approx(ref.ranknet(rel, scores), rel=1e-5)
    # A list without a valid pair changes nothing (no dilution of the mean).
    more_rel = np.concatenate([rel, np.full((3, 5), 2.0, "float32")])
    more_scores = np.concatenate([scores, _rng(7).normal(size=(3, 5)).astype("float32")])
    assert _value(loss, more_rel, more_scores) == pytest.approx(_value(loss, rel, scores), rel=1e-6)
    w = _rng(8).uniform(0, 2, len(rel)).astype("float32")
    assert _value(loss, rel, scores, w) == pytest.approx(ref.ranknet(rel, scores, weight=w), rel=1e-5)


# ---- gradients: autodiff vs finite differences of the numpy reference ----------------

CASES = {
    "wbce_pos": (
        lambda: losses.WeightedBinaryCrossentropy(2.0, from_logits=True),
        _binary,
        lambda y, x: ref.weighted_bce(y, x, pos_weight=2.0, from_logits=True),
    ),
    "wbce_class": (
        lambda: losses.WeightedBinaryCrossentropy(class_weights=[0.2, 1.5], from_logits=True),
        _binary,
        lambda y, x: ref.weighted_bce(y, x, class_weights=(0.2, 1.5), from_logits=True),
    ),
    "dice": (
        lambda: losses.Dice(smooth=1.0, from_logits=True),
        _binary,
        lambda y, x: ref.dice(y, x, smooth=1.0, from_logits=True),
    ),
    "tversky": (
        lambda: losses.Tversky(0.3, 0.7, from_logits=True),
        _binary,
        lambda y, x: ref.tversky(y, x, alpha=0.3, beta=0.7, smooth=1.0, from_logits=True),
    ),
    "triplet_hard": (
        lambda: losses.Triplet(margin=1.0, mining="batch_hard"),
        _embeddings,
        lambda y, x: ref.triplet(y, x, margin=1.0, mining="batch_hard"),
    ),
    "triplet_all": (
        lambda: losses.Triplet(margin=1.0, mining="batch_all"),
        _embeddings,
        lambda y, x: ref.triplet(y, x, margin=1.0, mining="batch_all"),
    ),
    "ranknet": (losses.RankNet, _lists, ref.ranknet),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_finite_differences(case):
    make, data, reference = CASES[case]
    loss = make()
    y, x = data()

    def f(pred):
        return loss(y, pred).total

    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(x)], delta=1e-3)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3, rtol=2e-2)
    expected = ref.numeric_gradient(lambda v: reference(y, v), x).reshape(-1)
    np.testing.assert_allclose(theoretical[0].reshape(-1), expected, atol=2e-5, rtol=1e-4)
    assert np.max(np.abs(expected)) > 1e-3  # the check is not between two zeros


@pytest.mark.parametrize("case", ["wbce_pos", "dice", "triplet_all", "ranknet"])
def test_library_losses_compile_with_xla(case):
    make, data, _ = CASES[case]
    loss = make()
    y, x = data()

    def value_and_grad(pred):
        with tf.GradientTape() as tape:
            tape.watch(pred)
            total = loss(y, pred).total
        return total, tape.gradient(total, pred)

    eager = value_and_grad(tf.constant(x))
    compiled = tf.function(value_and_grad, jit_compile=True)(tf.constant(x))
    assert float(compiled[0]) == pytest.approx(float(eager[0]), rel=1e-5)
    np.testing.assert_allclose(compiled[1].numpy(), eager[1].numpy(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_library_losses_compute_in_float32_from_half_precision(case):
    make, data, _ = CASES[case]
    y, x = data()
    result = make()(y, tf.cast(x, tf.float16))
    assert result.total.dtype == tf.float32
    assert float(result.total) == pytest.approx(float(make()(y, x).total), rel=2e-3)


# ---- Keras' own losses and custom regularizers as terms ------------------------------


@pytest.mark.parametrize(
    "keras_loss, kind",
    [
        (keras.losses.Huber(delta=0.7), "regression"),
        (keras.losses.BinaryFocalCrossentropy(gamma=2.0, from_logits=True), "binary"),
        (keras.losses.CategoricalFocalCrossentropy(gamma=2.0, from_logits=True), "categorical"),
        (keras.losses.Dice(), "probabilities"),
    ],
)
def test_keras_losses_work_as_terms_unchanged(keras_loss, kind):
    rng = _rng(9)
    y, logits = _binary((8, 4))
    if kind == "categorical":
        y = np.eye(4, dtype="float32")[rng.integers(0, 4, 8)]
    pred = ref.sigmoid(logits).astype("float32") if kind == "probabilities" else logits
    w = rng.uniform(0.2, 2, 8).astype("float32")
    term = losses.Term(keras_loss)
    assert _value(term, y, pred) == pytest.approx(float(keras_loss(y, pred)), rel=1e-5)
    if kind != "probabilities":  # Keras' sum_over_batch_size divides by the count, not the weight sum
        per_example = keras_loss.call(y, pred).numpy()
        expected = np.sum(w * per_example) / np.sum(w)
        assert _value(term, y, pred, w) == pytest.approx(expected, rel=1e-5)


def test_custom_regularizer_fn_of_the_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    biases = [v.numpy() for v in model.trainable_variables if v.name == "bias"]

    def bias_penalty(m):
        return tf.add_n([tf.reduce_sum(tf.square(v)) for v in m.trainable_variables if v.name == "bias"])

    model.layers[0].bias.assign(np.arange(4, dtype="float32"))
    biases = [v.numpy() for v in model.trainable_variables if v.name == "bias"]
    result = (0.5 * losses.Regularizer(bias_penalty) + losses.L1(0.01))(None, None, model=model)
    assert float(result.terms["bias_penalty"]) == pytest.approx(0.5 * sum(np.sum(b**2) for b in biases))
    assert float(result.raw["bias_penalty"]) == pytest.approx(sum(np.sum(b**2) for b in biases))
    kernels = [v.numpy() for v in model.trainable_variables if v.name == "kernel"]
    assert float(result.terms["l1"]) == pytest.approx(
        0.01 * sum(np.sum(np.abs(k)) for k in kernels), rel=1e-5
    )
