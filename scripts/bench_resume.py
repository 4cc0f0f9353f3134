"""Resume cost of an endless input: restoring the saved position vs replaying every batch.

For each pipeline, one iterator is advanced to each resume step and its
position saved (`framework.data.input_positions.InputStates`, as a checkpoint does).
Then, per step and method, a fresh `DistributedInput` (one CPU device) is
built and positioned, and the first batch after the position drawn; the time
from the start to that batch is what a resumed run waits before its first new
step on the input side. Methods take turns; medians over rounds.

    python scripts/bench_resume.py [--quick] [--rounds 3] [--replay_max 10000]

Pipelines (shuffles reshuffle each pass): "array" `from_tensor_slices ->
shuffle(1000) -> repeat -> map -> batch` over 50,000 vectors of 32 floats;
"array/global_shuffle" the same with `framework.data.global_shuffle`;
"tfrecord" `list_files(shuffle=True) -> interleave -> parse -> shuffle(256)
-> repeat -> batch` over 8 shards of 16x16x3 uint8 images (written to a
temporary directory); "tfrecord/shuffled_records" `framework.data.shuffled_records(4
files at a time) -> parse -> batch` over the same shards.
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

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from framework import data  # noqa: E402
from framework.data import input_positions

BATCH = 32
SIDE = 16


def array_pipeline(shuffle: str, examples: int):
    x = np.random.default_rng(0).normal(size=(examples, 32)).astype("float32")

    def hook(input_context):
        dataset = tf.data.Dataset.from_tensor_slices(x)
        if shuffle == "global":
            dataset = data.global_shuffle(dataset, seed=1)
        else:
            dataset = dataset.shuffle(1000, seed=1, reshuffle_each_iteration=True)
        return dataset.repeat().map(lambda v: v * 2.0).batch(BATCH)

    return hook


def write_shards(directory: str, shards: int = 8, per_shard: int = 512) -> str:
    rng = np.random.default_rng(0)
    for s in range(shards):
        with tf.io.TFRecordWriter(os.path.join(directory, f"shard-{s}.tfrecord")) as writer:
            for _ in range(per_shard):
                image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(10))])),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
    return os.path.join(directory, "shard-*.tfrecord")


def parse(record):
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    parsed = tf.io.parse_single_example(record, spec)
    image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), [SIDE, SIDE, 3])
    return tf.cast(image, tf.float32) / 255.0, parsed["label"]


def record_pipeline(pattern: str):
    def hook(input_context):
        files = tf.data.Dataset.list_files(pattern, shuffle=True, seed=1)
        dataset = files.interleave(tf.data.TFRecordDataset, cycle_length=4, block_length=1)
        dataset = dataset.map(parse).shuffle(256, seed=1, reshuffle_each_iteration=True)
        return dataset.repeat().batch(BATCH)

    return hook


def indexed_record_pipeline(pattern: str):
    def hook(input_context):
        records = data.shuffled_records(pattern, seed=1, cycle_length=4, input_context=input_context)
        return records.map(parse).batch(BATCH)

    return hook


@tf.function
def _advance(iterator, count):
    for _ in tf.range(count):
        next(iterator)


def _input(hook, strategy, steps):
    return data.DistributedInput(strategy, hook, "bench", steps_per_epoch=steps)


def save_positions(hook, strategy, steps: list[int], directory: str) -> int:
    """Saves the positions at `steps`; returns the size in bytes of the last one."""
    source = _input(hook, strategy, max(steps))
    source.states = input_positions.InputStates(directory, 0)
    iterator, at = source.iterator(0), 0
    for step in steps:
        _advance(iterator, tf.constant(step - at, tf.int64))
        at = step
        source.save_position(step)
    return source.states.size(steps[-1])


def resume_time(hook, strategy, step: int, directory: str | None) -> tuple[float, float]:
    """(process seconds, wall seconds) from nothing to the first batch after `step`."""
    wall, cpu = time.perf_counter(), time.process_time()
    source = _input(hook, strategy, step)
    if directory:
        source.states = input_positions.InputStates(directory, 0)
        source.resume_at(step)
    next(source.iterator(0, skip=step))
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small steps, one round (for tests)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--replay_max", type=int, default=10_000, help="replay only up to this step (it costs every batch)"
    )
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")  # each fresh input traces its replay loop once: expected here
    steps = [20, 40, 80] if args.quick else [1_000, 10_000, 50_000]
    examples = 2_000 if args.quick else 50_000
    rounds = 1 if args.quick else args.rounds
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with tempfile.TemporaryDirectory() as tmp:
        pattern = write_shards(tmp, per_shard=64 if args.quick else 512)
        pipelines = {
            "array": array_pipeline("buffer", examples),
            "array/global_shuffle": array_pipeline("global", examples),
            "tfrecord": record_pipeline(pattern),
            "tfrecord/shuffled_records": indexed_record_pipeline(pattern),
        }
        rows = []
        for name, hook in pipelines.items():
            directory = os.path.join(tmp, name.replace("/", "-"))
            size = save_positions(hook, strategy, steps, directory)
            times = {(m, s): [] for m in ("restore", "replay") for s in steps}
            for _ in range(rounds):
                for step in steps:
                    times["restore", step].append(resume_time(hook, strategy, step, directory))
                    if step <= args.replay_max:
                        times["replay", step].append(resume_time(hook, strategy, step, None))
            for method in ("restore", "replay"):
                cpu = {
                    s: statistics.median(t[0] for t in times[method, s]) for s in steps if times[method, s]
                }
                wall = {
                    s: statistics.median(t[1] for t in times[method, s]) for s in steps if times[method, s]
                }
                rows.append((name, method, size if method == "restore" else 0, cpu, wall))
    header = (
        "| pipeline | method | state (KB) | "
        + " | ".join(f"at {s} CPU s / wall s" for s in steps)
        + f" | CPU / CPU at {steps[0]} |"
    )
    print(header)
    print("|" + "---|" * (4 + len(steps)))
    for name, method, size, cpu, wall in rows:
        cells = " | ".join(f"{cpu[s]:.3f} / {wall[s]:.3f}" if s in cpu else "not run" for s in steps)
        state = f"{size / 1024:.1f}" if size else "-"
        last = max(cpu)
        print(f"| {name} | {method} | {state} | {cells} | {cpu[last] / cpu[steps[0]]:.2f} (at {last}) |")


if __name__ == "__main__":
    main()
