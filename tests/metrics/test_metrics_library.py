"""RecallAtK and NDCG against numpy / scikit-learn, and under mirrored replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import ndcg_score

from framework.metrics import NDCG, RecallAtK

from toys import ArrayTrainer, ExampleCount, config


def recall_at_k_numpy(emb, labels, k):
    d = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.mean([(labels[nearest[i]] == labels[i]).any() for i in range(len(labels))])


def test_recall_at_k_matches_brute_force_over_batches():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 4)).astype("float32")
    labels = rng.integers(0, 5, 50)
    metric = RecallAtK([1, 3, 5], dim=4, capacity=64)
    for start in range(0, 50, 16):
        metric.update_state(labels[start : start + 16], emb[start : start + 16])
    got = {k: float(v) for k, v in metric.result().items()}
    for k in (1, 3, 5):
        assert got[str(k)] == pytest.approx(recall_at_k_numpy(emb, labels, k), abs=1e-6)
    assert got["1"] < got["5"]  # not a constant
    metric.reset_state()
    assert int(metric.count.numpy()) == 0


def test_recall_at_k_overflow_fails_with_its_name():
    metric = RecallAtK(1, dim=2, capacity=4, name="r1")
    with pytest.raises(tf.errors.InvalidArgumentError, match="r1: more examples than capacity"):
        metric.update_state(np.zeros(5), np.zeros((5, 2), "float32"))


def _ranking_data(lists=40, size=6, seed=0):
    rng = np.random.default_rng(seed)
    relevance = rng.integers(0, 4, (lists, size)).astype("float32")
    relevance[:3] = 0  # lists without any relevant item are left out
    scores = (relevance + rng.normal(0, 1.5, relevance.shape)).astype("float32")
    return relevance, scores


def test_ndcg_linear_gain_matches_scikit_learn():
    relevance, scores = _ranking_data()
    metric = NDCG(5, gain="linear")
    metric.update_state(relevance[:25], scores[:25])
    metric.update_state(relevance[25:], scores[25:])
    valid = relevance.sum(1) > 0
    expected = ndcg_score(relevance[valid], scores[valid], k=5)
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)


def test_ndcg_exponential_gain_matches_numpy():
    relevance, scores = _ranking_data(seed=1)
    metric = NDCG(3)
    metric.update_state(relevance, scores)
    values = []
    for rel, s in zip(relevance, scores):
        disc = 1 / np.log2(np.arange(2, 5))
        ideal = np.sum((2 ** np.sort(rel)[::-1][:3] - 1) * disc)
        if ideal > 0:
            values.append(np.sum((2 ** rel[np.argsort(-s, kind="stable")][:3] - 1) * disc) / ideal)
    assert float(metric.result()) == pytest.approx(np.mean(values), rel=1e-5)


class EmbeddingTrainer(ArrayTrainer):
    """Evaluates RecallAtK and NDCG on fixed 'predictions': the model is the identity."""

    def build_loss(self):
        from framework import losses

        return losses.Term(lambda y, p: tf.reduce_sum(p * 0.0, axis=-1), name="zero")


@pytest.mark.parametrize("replicas", [1, 2])
def test_metrics_are_exact_under_mirrored_replicas(replicas):
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(44, 4)).astype("float32")  # 44 = uneven split over 2 replicas of 8
    labels = rng.integers(0, 4, 44).astype("int32")
    strategy = {"distribution.strategy": "mirrored", "distribution.cpu_devices": 2} if replicas > 1 else {}

    def identity():
        return keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(4, use_bias=False, kernel_initializer="identity")]
        )

    trainer = EmbeddingTrainer(
        config(**strategy), data=(emb, labels), eval_data=(emb, labels), model_fn=identity,
        metrics=lambda: [RecallAtK([1, 3], dim=4, capacity=64)],
    )  # fmt: skip
    logs = trainer.evaluate()
    assert logs["recall_at_k/1"] == pytest.approx(recall_at_k_numpy(emb, labels, 1), abs=1e-6)
    assert logs["recall_at_k/3"] == pytest.approx(recall_at_k_numpy(emb, labels, 3), abs=1e-6)
    again = trainer.evaluate()  # reset between evaluations: same values, not doubled data
    assert again == logs


@pytest.mark.parametrize("replicas", [1, 2])
def test_ndcg_is_exact_under_mirrored_replicas(replicas):
    relevance, scores = _ranking_data(lists=37)
    strategy = {"distribution.strategy": "mirrored", "distribution.cpu_devices": 2} if replicas > 1 else {}

    def identity():
        return keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(6, use_bias=False, kernel_initializer="identity")]
        )

    trainer = EmbeddingTrainer(
        config(**strategy), data=(scores, relevance), eval_data=(scores, relevance), model_fn=identity,
        metrics=lambda: [NDCG(5, gain="linear")],
    )  # fmt: skip
    valid = relevance.sum(1) > 0
    assert trainer.evaluate()["ndcg_5"] == pytest.approx(
        ndcg_score(relevance[valid], scores[valid], k=5), rel=1e-5
    )


def _two_heads():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, {"cls": keras.layers.Dense(3)(hidden), "reg": keras.layers.Dense(1)(hidden)})


def test_metrics_that_build_on_first_use_work_under_mirrored_replicas():
    from toys import blobs

    x, y = blobs(n=64)
    yb = (y == 1).astype("float32")[:, None]

    def model_fn():
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, activation="sigmoid")])

    from framework import losses

    trainer = ArrayTrainer(
        config(**{"distribution.strategy": "mirrored", "distribution.cpu_devices": 2}),
        data=(x, yb), eval_data=(x, yb), model_fn=model_fn,
        loss=losses.Term(keras.losses.BinaryCrossentropy()),
        metrics=lambda: [keras.metrics.F1Score(average="micro", threshold=0.5, name="f1")],
    )  # fmt: skip
    trainer.fit()
    predicted = (trainer.model.predict(x, verbose=0) > 0.5).astype("float32")
    tp = float(np.sum(predicted * yb))
    expected = 2 * tp / (np.sum(predicted) + np.sum(yb))
    assert trainer.evaluate()["f1"] == pytest.approx(expected, abs=1e-5)


def test_nan_masked_labels_are_left_out_of_the_heads_metrics_and_partial_weight_dicts():
    from framework import losses

    from toys import blobs

    x, y = blobs(n=64)
    cls = y.astype("float32")
    cls[::3] = np.nan  # a third of the class labels are missing
    data = (
        x,
        {"cls": cls, "reg": x[:, :1]},
        {"reg": np.full(64, 2.0, "float32")},
    )  # weights for one head only
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trainer = ArrayTrainer(
        config(epochs=2), data=data, eval_data=(x, {"cls": cls, "reg": x[:, :1]}), model_fn=_two_heads,
        loss=losses.Term(ce, head="cls", mask_nan=True) + losses.Term(keras.losses.MeanSquaredError(), head="reg"),
        metrics=lambda: {"cls": [keras.metrics.SparseCategoricalAccuracy(name="acc")]},
    )  # fmt: skip
    trainer.fit()
    logs = trainer.evaluate()
    valid = ~np.isnan(cls)
    predicted = np.argmax(trainer.model.predict(x, verbose=0)["cls"], -1)
    assert logs["cls/acc"] == pytest.approx(np.mean(predicted[valid] == y[valid]), abs=1e-6)


def test_eval_only_metrics_are_not_updated_in_training():
    from toys import blobs

    class EvalOnly(ArrayTrainer):
        def build_eval_metrics(self):
            return [ExampleCount()]

    x, y = blobs(n=64)
    trainer = EvalOnly(config(epochs=2), data=(x, y), eval_data=(x[:40], y[:40]), model_fn=lambda: __import__("toys").mlp(),
                       metrics=lambda: [keras.metrics.SparseCategoricalAccuracy(name="acc")])  # fmt: skip
    history = trainer.fit()
    assert "count" not in history[-1] and "acc" in history[-1]
    assert history[-1]["val/count"] == 40.0 and "val/acc" not in history[-1]
