"""Common training-step speed claims, measured here: eager vs tf.function vs XLA, float16 vs float32.

    python scripts/bench_steps.py [--rounds 7] [--quick] [--markdown]

The model is the common tutorial example (784 -> Dense(128, relu) -> Dense(10,
softmax), categorical cross-entropy, Adam), one training step per call on a
batch of 128. Contestants:

  eager          GradientTape step, run eagerly
  tf.function    the same step under @tf.function
  xla            @tf.function(jit_compile=True)
  mixed_float16  tf.function, Keras mixed_float16 policy + LossScaleOptimizer
  float16 layers tf.function, the tutorials' dtype=tf.float16 layers (no loss scaling)

Steps per CPU-second (`time.process_time`) and per wall-second, medians over
interleaved rounds, and each as a ratio to tf.function measured in the same round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _model(dtype=None):
    keras.utils.set_random_seed(0)
    kwargs = {"dtype": dtype} if dtype else {}
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(128, activation="relu", **kwargs),
            keras.layers.Dense(10, activation="softmax", **kwargs),
        ]
    )


def _step_fn(kind: str):
    """A function doing one training step on (x, y)."""
    if kind == "mixed_float16":
        keras.config.set_dtype_policy("mixed_float16")
        model = _model()
        keras.config.set_dtype_policy("float32")
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
    elif kind == "float16 layers":
        model = _model("float16")
        optimizer = keras.optimizers.Adam(epsilon=1e-4)
    else:
        model = _model()
        optimizer = keras.optimizers.Adam()
    loss_fn = keras.losses.CategoricalCrossentropy()
    optimizer.build(model.trainable_variables)

    def step(x, y):
        with tf.GradientTape() as tape:
            pred = model(tf.cast(x, model.compute_dtype), training=True)
            loss = loss_fn(tf.cast(y, pred.dtype), pred)
            scaled = optimizer.scale_loss(loss) if kind == "mixed_float16" else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    if kind == "eager":
        return step
    return tf.function(step, jit_compile=kind == "xla")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rounds, steps = (2, 20) if args.quick else (args.rounds, args.steps)
    kinds = ["tf.function", "eager", "xla", "mixed_float16", "float16 layers"]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(128, 784)).astype("float32"))
    y = tf.one_hot(rng.integers(0, 10, 128), 10)
    fns = {k: _step_fn(k) for k in kinds}
    for fn in fns.values():  # trace, compile, warm up
        for _ in range(3):
            fn(x, y)
    samples = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind, fn in fns.items():
            n = max(2, steps // 10) if kind == "eager" else steps
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                loss = fn(x, y)
            float(loss)
            samples[kind].append((n / (time.process_time() - cpu), n / (time.perf_counter() - wall)))
    base = samples["tf.function"]
    header = "| step | steps/CPU-s | steps/wall-s | × tf.function (CPU) | × tf.function (wall) |"
    print(header if args.markdown else header.replace("|", " "))
    if args.markdown:
        print("|---|---|---|---|---|")
    for kind, rows in samples.items():
        cpu = statistics.median(r[0] for r in rows)
        wall = statistics.median(r[1] for r in rows)
        rc = statistics.median(r[0] / b[0] for r, b in zip(rows, base))
        rw = statistics.median(r[1] / b[1] for r, b in zip(rows, base))
        print(f"| {kind} | {cpu:.0f} | {wall:.0f} | {rc:.2f} | {rw:.2f} |")


if __name__ == "__main__":
    main()
