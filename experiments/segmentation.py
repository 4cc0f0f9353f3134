"""Binary segmentation with Dice + cross-entropy: find the circles, ignore the squares.

Generated 32x32 grey images hold 1-4 filled circles and squares of random
size, brightness and position on a noisy background; the mask marks the
visible circle pixels only, so the network has to tell shapes apart, not just
threshold brightness. A small U-Net (two poolings, skip connections) is
trained on `losses.Dice()` (computed over the whole global batch, exact on
any number of replicas) plus pixel-wise binary cross-entropy. Reported: IoU
of the foreground (`keras.metrics.BinaryIoU`) and the Dice score
2|A∩B| / (|A| + |B|) over the evaluation set, both at threshold 0.5.

python experiments/segmentation.py --config=configs/segmentation.py --workdir=runs/segmentation
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import framework
from common import batches
from framework import losses


def shapes(count: int, *, size: int = 32, noise: float = 0.2, seed: int = 0):
    """(images [count, size, size, 1], circle masks [count, size, size, 1]), float32, deterministic.

    Each image gets 1-4 shapes that do not touch (a shape that would is
    redrawn elsewhere); a circle's radius (a square's half side) is 3-7 pixels.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]

    def region(circle, cy, cx, radius):
        if circle:
            return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        return (np.abs(rows - cy) <= radius) & (np.abs(cols - cx) <= radius)

    images = np.zeros((count, size, size), "float32")
    masks = np.zeros((count, size, size), "float32")
    for image, mask in zip(images, masks):
        image += rng.uniform(0.0, 0.2)  # background level
        taken = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 5)):
            for _attempt in range(20):
                circle, radius = rng.random() < 0.5, rng.uniform(3.0, 7.0)
                cy, cx = rng.uniform(radius, size - 1 - radius, 2)
                if not (region(circle, cy, cx, radius + 2.0) & taken).any():
                    break
            else:
                continue  # no room left
            inside = region(circle, cy, cx, radius)
            taken |= inside
            image[inside] = rng.uniform(0.5, 1.0)
            mask[inside] = float(circle)
    images += rng.normal(0.0, noise, images.shape).astype("float32")
    return images[..., None], masks[..., None]


class DiceScore(keras.metrics.BinaryIoU):
    """Dice score of class 1, 2TP / (2TP + FP + FN), from BinaryIoU's confusion matrix."""

    def __init__(self, threshold: float = 0.5, name: str = "dice"):
        super().__init__(target_class_ids=[1], threshold=threshold, name=name)

    def result(self):
        cm = tf.cast(self.total_cm, tf.float32)  # rows: true class, columns: predicted class
        tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
        return tf.math.divide_no_nan(2.0 * tp, 2.0 * tp + fp + fn)


def unet(size: int, width: int) -> keras.Model:
    """A simple U-Net: two down steps, a bottleneck, two up steps with skips."""

    def conv(x, filters):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        return keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)

    inputs = keras.Input((size, size, 1))
    c1 = conv(inputs, width)
    c2 = conv(keras.layers.MaxPooling2D()(c1), 2 * width)
    bottleneck = conv(keras.layers.MaxPooling2D()(c2), 4 * width)
    u2 = conv(keras.layers.Concatenate()([keras.layers.UpSampling2D()(bottleneck), c2]), 2 * width)
    u1 = conv(keras.layers.Concatenate()([keras.layers.UpSampling2D()(u2), c1]), width)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32")(u1)
    return keras.Model(inputs, outputs, name="unet")


class SegmentationTrainer(framework.Trainer):
    def __init__(self, config, workdir=None, **kwargs):
        data = config.data
        self.train_data = shapes(data.train_images, noise=data.noise, seed=config.seed)
        self.eval_data = shapes(data.eval_images, noise=data.noise, seed=config.seed + 10_000)
        super().__init__(config, workdir, **kwargs)

    def build_model(self):
        return unet(32, self.config.model.width)

    def build_loss(self):
        task = self.config.task
        dice = losses.Dice(weight=task.dice_weight)
        bce = losses.Term(keras.losses.BinaryCrossentropy(), name="bce", weight=task.bce_weight)
        return dice + bce

    def build_metrics(self):
        return [keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou"), DiceScore()]

    def build_train_dataset(self, input_context):
        return batches(self.train_data, input_context, self.config.batch_size, shuffle_seed=self.config.seed)

    def build_eval_dataset(self, input_context):
        return batches(self.eval_data, input_context, self.config.batch_size)


if __name__ == "__main__":
    framework.run(SegmentationTrainer)
