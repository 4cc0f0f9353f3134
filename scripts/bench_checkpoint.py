"""Checkpoint costs: save/restore of a ~10M-parameter model, and resume replay of a large input.

    python scripts/bench_checkpoint.py [--rounds 3] [--examples 1000000] [--markdown]

Save: time until `save()` returns (the training loop is blocked only this
long; orbax writes in the background) and until the write is on disk.
Restore: reading the checkpoint back into the variables. Replay: how long
`DistributedInput.iterator(epoch, skip=...)` takes to reposition the input
pipeline of a shuffled (reshuffle_each_iteration) dataset, compared with
drawing the same batches while training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import framework  # noqa: E402
from framework import losses  # noqa: E402
from framework.checkpointing import checkpoint
from framework.data import DistributedInput  # noqa: E402


class Big(framework.Trainer):
    def build_model(self):
        return keras.Sequential(
            [
                keras.Input((1000,)),
                keras.layers.Dense(2500),
                keras.layers.Dense(2500),
                keras.layers.Dense(500),
            ]
        )

    def build_loss(self):
        return losses.Term(keras.losses.MeanSquaredError())

    def build_train_dataset(self, input_context):
        return tf.data.Dataset.from_tensors((tf.zeros([1000]), tf.zeros([500]))).repeat(8).batch(8)


def bench_save_restore(rounds: int, scale: float = 1.0) -> dict:
    cfg = framework.config.defaults()
    cfg.model.scale = scale
    trainer = Big(cfg)
    trainer.build_state(trainer.build_train_dataset(tf.distribute.InputContext()).element_spec)
    groups = trainer.checkpoint_state()
    rng = np.random.default_rng(0)
    for variables in groups.values():  # trained values do not compress like fresh zeros
        for v in variables:
            v.assign(rng.normal(size=v.shape).astype(np.asarray(v).dtype))
    params = sum(int(np.prod(v.shape)) for v in trainer.model.trainable_variables)
    total = sum(int(np.prod(v.shape)) for vs in groups.values() for v in vs)
    blocked, on_disk, restored = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = checkpoint.Checkpoints(tmp, cfg.checkpoint, writer=True)
        for step in range(1, rounds + 1):
            start = time.perf_counter()
            ckpts.save(step, groups, {"step": step, "epoch": 0})
            blocked.append(time.perf_counter() - start)
            ckpts.wait()
            on_disk.append(time.perf_counter() - start)
            start = time.perf_counter()
            ckpts.restore(groups, step)
            restored.append(time.perf_counter() - start)
        size = sum(
            os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(tmp, "1")) for f in fs
        )
        ckpts.close()
    return {
        "parameters": params, "values saved": total, "MB on disk": size / 2**20,
        "save blocks (s)": statistics.median(blocked), "save on disk (s)": statistics.median(on_disk),
        "restore (s)": statistics.median(restored),
    }  # fmt: skip


def bench_replay(examples: int, batch: int, epoch: int, skip: int) -> dict:
    x = np.random.default_rng(0).normal(size=(examples, 32)).astype("float32")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")

    def hook(ctx):
        ds = tf.data.Dataset.from_tensor_slices(x).shuffle(10_000, seed=0, reshuffle_each_iteration=True)
        return ds.batch(batch)

    fresh = DistributedInput(strategy, hook, "bench")
    start = time.perf_counter()
    iterator = fresh.iterator(epoch, skip=skip)
    first = next(iterator)
    replay = time.perf_counter() - start

    straight = DistributedInput(strategy, hook, "bench")
    for e in range(epoch):
        straight.iterator(e)
    start = time.perf_counter()
    it = straight.iterator(epoch)

    @tf.function
    def draw(iterator, n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            total += tf.reduce_sum(next(iterator))
        return total

    draw(it, tf.constant(skip))
    reference = next(it)
    drawn = time.perf_counter() - start
    assert np.array_equal(np.asarray(first), np.asarray(reference)), "replay is not at the same position"
    return {
        "examples": examples, "batch": batch, "steps/epoch": examples // batch, "resume at": f"epoch {epoch + 1}, step {skip}",
        "replay (s)": replay, "drawing the same batches (s)": drawn, "per skipped batch (ms)": 1000 * replay / max(skip, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables for BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="a small model and input (for CI)")
    args = parser.parse_args()
    rounds, examples, scale = (1, 20_000, 0.1) if args.quick else (args.rounds, args.examples, 1.0)
    results = {
        "save/restore": bench_save_restore(rounds, scale),
        "replay": bench_replay(examples, 256, epoch=4, skip=(examples // 256) // 2),
    }
    for name, row in results.items():
        print(f"## {name}")
        if args.markdown:
            print("| " + " | ".join(row) + " |")
            print("|" + "---|" * len(row))
            print(
                "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |"
            )
        else:
            for key, value in row.items():
                print(f"  {key:<32} {value:.3g}" if isinstance(value, float) else f"  {key:<32} {value}")


if __name__ == "__main__":
    main()
