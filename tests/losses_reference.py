"""Independent float64 numpy references for the library losses, written as loops.

They follow the textbook formulas literally (no vectorization tricks), so a
shared mistake with the TensorFlow code is unlikely. Also: a central
finite-difference gradient and deterministic test data.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def weighted_bce(y, pred, *, pos_weight=None, class_weights=None, from_logits=False, weight=None):
    """Mean over elements (weighted by per-example `weight`) of the weighted BCE."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    p = sigmoid(pred) if from_logits else np.clip(pred, 1e-7, 1 - 1e-7)
    if class_weights is None:
        values = -(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))
    else:
        w0, w1 = class_weights
        values = -(w1 * y + w0 * (1 - y)) * (y * np.log(p) + (1 - y) * np.log(1 - p))
    w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    w = np.broadcast_to(w.reshape((-1,) + (1,) * (values.ndim - 1)), values.shape)
    return np.sum(w * values) / np.sum(w)


def _element_weights(weight, shape):
    if weight is None:
        return np.ones(shape)
    weight = np.asarray(weight, np.float64)
    weight = weight.reshape(weight.shape + (1,) * (len(shape) - weight.ndim))
    return np.broadcast_to(weight, shape)


def dice(y, pred, *, smooth, from_logits=False, weight=None):
    y, p = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    p = sigmoid(p) if from_logits else p
    w = _element_weights(weight, p.shape)
    inter = sum(wi * yi * pi for wi, yi, pi in zip(w.ravel(), y.ravel(), p.ravel()))
    total = sum(wi * (yi + pi) for wi, yi, pi in zip(w.ravel(), y.ravel(), p.ravel()))
    return 1 - (2 * inter + smooth) / (total + smooth)


def tversky(y, pred, *, alpha, beta, smooth, from_logits=False, weight=None):
    y, p = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    p = sigmoid(p) if from_logits else p
    w = _element_weights(weight, p.shape)
    tp = fp = fn = 0.0
    for wi, yi, pi in zip(w.ravel(), y.ravel(), p.ravel()):
        tp += wi * yi * pi
        fp += wi * (1 - yi) * pi
        fn += wi * yi * (1 - pi)
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def triplet(labels, emb, *, margin, mining, weight=None):
    labels = np.asarray(labels).reshape(-1)
    emb = np.asarray(emb, np.float64)
    n = len(labels)
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64).reshape(-1)

    def d(i, j):
        return np.sqrt(np.sum((emb[i] - emb[j]) ** 2))

    num = den = 0.0
    for a in range(n):
        if w[a] <= 0:
            continue
        pos = [p for p in range(n) if p != a and labels[p] == labels[a] and w[p] > 0]
        neg = [q for q in range(n) if labels[q] != labels[a] and w[q] > 0]
        if mining == "batch_hard":
            if pos and neg:
                num += w[a] * max(0.0, max(d(a, p) for p in pos) - min(d(a, q) for q in neg) + margin)
                den += w[a]
        else:
            for p in pos:
                for q in neg:
                    loss = max(0.0, d(a, p) - d(a, q) + margin)
                    if loss > 0:
                        num += w[a] * loss
                        den += w[a]
    return num / den if den > 0 else 0.0


def ranknet(rel, scores, *, weight=None):
    rel, scores = np.asarray(rel, np.float64), np.asarray(scores, np.float64)
    w = np.ones(len(rel)) if weight is None else np.asarray(weight, np.float64).reshape(-1)
    num = den = 0.0
    for b in range(len(rel)):
        pairs = [
            np.log1p(np.exp(-(scores[b, i] - scores[b, j])))
            for i in range(rel.shape[1])
            for j in range(rel.shape[1])
            if rel[b, i] > rel[b, j] and rel[b, j] >= 0
        ]
        if pairs:
            num += w[b] * np.mean(pairs)
            den += w[b]
    return num / den if den > 0 else 0.0


def numeric_gradient(f, x, eps=1e-6):
    """Central differences of a float64 function of an array."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (f(up) - f(down)) / (2 * eps)
    return grad
