"""`framework.data.shuffled_records`: its order, its sharding, its errors, the size of its saved
position (against a `shuffle(N)` record pipeline's), and a restore in a fresh process."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from timeouts import seconds

from framework import data
from framework.data import input_positions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COUNTS = (5, 9, 0, 7, 4)  # records per file, one file empty


def _write(directory, counts=COUNTS, record_bytes=8, compression=None):
    """Files of `counts` records "<file>:<record>:" padded to `record_bytes` with random bytes."""
    rng = np.random.default_rng(0)
    paths = []
    for f, count in enumerate(counts):
        path = os.path.join(directory, f"part-{f}.tfrecord")
        with tf.io.TFRecordWriter(path, options=compression) as writer:
            for r in range(count):
                prefix = f"{f}:{r}:".encode()
                writer.write(prefix + rng.bytes(max(record_bytes - len(prefix), 0)))
        paths.append(path)
    return paths


def _records(dataset, count):
    """The first `count` records, unpadded: b"<file>:<record>:"."""
    return [b":".join(r.split(b":")[:2]) + b":" for r in dataset.take(count).as_numpy_iterator()]


def _every_record(files=None):
    files = range(len(COUNTS)) if files is None else files
    return sorted(f"{f}:{r}:".encode() for f in files for r in range(COUNTS[f]))


@pytest.mark.parametrize("cycle_length", [1, 2, 8])
def test_each_pass_yields_every_record_once_in_a_new_order(tmp_path, cycle_length):
    files = _write(str(tmp_path))
    total = sum(COUNTS)
    stream = _records(data.shuffled_records(files, 3, cycle_length=cycle_length), 3 * total)
    passes = [stream[i * total : (i + 1) * total] for i in range(3)]
    for one_pass in passes:
        assert sorted(one_pass) == _every_record()
    assert passes[0] != passes[1] != passes[2] != passes[0]
    assert passes[0] != sorted(passes[0])
    assert _records(data.shuffled_records(files, 3, cycle_length=cycle_length), 3 * total) == stream
    assert _records(data.shuffled_records(files, 4, cycle_length=cycle_length), total) != passes[0]


def test_a_glob_pattern_and_compressed_files_give_the_same_stream(tmp_path):
    os.makedirs(tmp_path / "plain")
    os.makedirs(tmp_path / "gzip")
    plain = _write(str(tmp_path / "plain"))
    packed = _write(str(tmp_path / "gzip"), compression="GZIP")
    expected = _records(data.shuffled_records(plain, 5), 40)
    assert _records(data.shuffled_records(str(tmp_path / "plain" / "part-*.tfrecord"), 5), 40) == expected
    assert _records(data.shuffled_records(packed, 5, compression_type="GZIP"), 40) == expected


def test_input_pipelines_read_disjoint_files_that_cover_them_all(tmp_path):
    files = _write(str(tmp_path))
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
        own = [i for i in range(len(files)) if i % 2 == pipeline]
        count = sum(COUNTS[i] for i in own)
        one_pass = _records(data.shuffled_records(files, 3, input_context=context), count)
        assert sorted(one_pass) == _every_record(own)
        seen += one_pass
    assert sorted(seen) == _every_record()
    with pytest.raises(ValueError, match="5 files for 6 input pipelines"):
        context = tf.distribute.InputContext(num_input_pipelines=6, input_pipeline_id=0)
        data.shuffled_records(files, 3, input_context=context)


@pytest.mark.parametrize(
    "files, kwargs, error, match",
    [
        ([], {}, ValueError, "no files"),
        ("/nonexistent/part-*.tfrecord", {}, ValueError, "matches no file"),
        ([3], {}, TypeError, "paths or one glob pattern"),
        (None, {"seed": 1.5}, TypeError, "seed"),
        (None, {"cycle_length": 0}, ValueError, "cycle_length=0"),
        (None, {"compression_type": "LZ4"}, ValueError, "compression_type='LZ4'"),
    ],
)
def test_bad_arguments_are_named(tmp_path, files, kwargs, error, match):
    files = _write(str(tmp_path)) if files is None else files
    with pytest.raises(error, match=match):
        data.shuffled_records(files, **{"seed": 1, **kwargs})


def _decode(record):
    return tf.io.decode_raw(record, tf.uint8)


def _position_bytes(dataset, directory, batches=20):
    iterator = iter(dataset)
    for _ in range(batches):
        next(iterator)
    tf.train.Checkpoint(iterator=iterator).write(os.path.join(directory, "position"))
    return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory) if "position" in n)


def test_the_saved_position_holds_no_records(tmp_path):
    """3 KB images: the shuffle(64) pipeline saves its buffer, shuffled_records a few KB either way."""
    sizes = {}
    for record_bytes in (64, 3072):
        files = _write(str(tmp_path), counts=(64,) * 4, record_bytes=record_bytes)
        indexed = data.shuffled_records(files, 1, cycle_length=2).map(_decode).batch(8).prefetch(2)
        assert input_positions.unsavable_reason(indexed) is None
        buffered = tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.data.TFRecordDataset, cycle_length=2
        )
        buffered = buffered.map(_decode).shuffle(64, seed=1).repeat().batch(8)
        for name, dataset in (("indexed", indexed), ("buffered", buffered)):
            os.makedirs(tmp_path / f"{name}-{record_bytes}")
            sizes[name, record_bytes] = _position_bytes(dataset, str(tmp_path / f"{name}-{record_bytes}"))
    assert sizes["indexed", 3072] < 16384, sizes
    assert abs(sizes["indexed", 3072] - sizes["indexed", 64]) < 1024, sizes  # not in the records' size
    assert sizes["buffered", 3072] > 64 * 3072 > 10 * sizes["indexed", 3072], sizes


def _hashed_batches(files):
    """Batches of 3 records, each as an int64 hash."""
    records = data.shuffled_records(files, 7, cycle_length=2)
    return records.map(lambda r: tf.strings.to_hash_bucket_fast(r, 2**62)).batch(3)


_RESTORE = """
import sys, numpy as np, tensorflow as tf
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests", sys.argv[1] + "/tests/data"]
from test_record_stream import _hashed_batches
files, points, out = sys.argv[2].split(","), [int(p) for p in sys.argv[3].split(",")], sys.argv[4]
following = {}
for point in points:
    iterator = iter(_hashed_batches(files))
    tf.train.Checkpoint(iterator=iterator).read(f"{out}-{point}").assert_consumed()
    following[str(point)] = np.stack([next(iterator).numpy() for _ in range(30)])
np.savez(out, **following)
"""


def test_a_fresh_process_continues_the_saved_stream_exactly(tmp_path):
    """Saved mid-file, at and across the first pass's end (25 records, batches of 3), and in the third pass."""
    files = _write(str(tmp_path))
    points = [2, 8, 9, 20]
    iterator = iter(_hashed_batches(files))
    stream = [next(iterator).numpy() for _ in range(max(points) + 30)]
    iterator = iter(_hashed_batches(files))
    out = str(tmp_path / "following")
    for at in range(max(points) + 1):
        if at in points:
            tf.train.Checkpoint(iterator=iterator).write(f"{out}-{at}")
        next(iterator)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, "-c", _RESTORE, ROOT, ",".join(files), ",".join(map(str, points)), out]
    finished = subprocess.run(args, env=env, capture_output=True, text=True, timeout=seconds(900))
    assert finished.returncode == 0, finished.stderr[-3000:]
    following = np.load(out + ".npz")
    for at in points:
        assert np.array_equal(following[str(at)], np.stack(stream[at : at + 30])), at


def test_the_stream_is_known_to_be_infinite(tmp_path):
    stream = data.shuffled_records(_write(str(tmp_path)), 1)
    assert stream.cardinality() == tf.data.INFINITE_CARDINALITY


def test_an_op_that_cannot_save_its_state_is_named_once_and_the_run_replays(tmp_path, caplog):
    files = _write(str(tmp_path))
    lengths = data.shuffled_records(files, 1).map(tf.strings.length)
    dataset = lengths.bucket_by_sequence_length(lambda n: n, [10], [4, 4])
    states = input_positions.InputStates(str(tmp_path / "input"), 0)
    iterator = iter(dataset)
    next(iterator)
    with caplog.at_level(logging.WARNING, logger="absl"):
        states.write(iterator, 3)
        states.write(iterator, 6)
    warnings = [r.getMessage() for r in caplog.records if "cannot be saved" in r.getMessage()]
    assert len(warnings) == 1 and "GroupByWindowDataset" in warnings[0], warnings
    assert not states.read(iter(dataset), 3)
