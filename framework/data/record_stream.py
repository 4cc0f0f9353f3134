"""An endless, shuffled stream of TFRecords whose saved position holds no records.

`shuffle(N)` over a TFRecord stream saves its N buffered elements with each
iterator checkpoint, because tf.data saves shuffle buffers whole and a
TFRecord file cannot be read at an arbitrary record. `shuffled_records`
shuffles without a buffer: each pass visits the files in a seeded order, and
reads each file whole, to emit its records in a seeded permutation. With
tf.data's symbolic checkpointing the position is a handful of counters
(pass, file, record), and restoring it re-reads the files in use.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import tensorflow as tf

_COMPRESSIONS = (None, "", "ZLIB", "GZIP")
_WHOLE_FILE = 2**62  # a batch size no file reaches


def shuffled_records(
    files: str | Sequence[str],
    seed: int,
    *,
    cycle_length: int = 4,
    input_context: tf.distribute.InputContext | None = None,
    compression_type: str | None = None,
) -> tf.data.Dataset:
    """Serialized records of `files`, endlessly, every pass in a new seeded order; a position of ~5 KB.

    Pass p reads the files in a permutation seeded by (seed, p), `cycle_length`
    at a time, alternating records between them (`interleave`, block 1). Each
    file is read whole and its records emitted in a permutation seeded by
    (seed, p, file): every pass yields every record exactly once. Nothing is
    buffered across a checkpoint: symbolic checkpointing is switched on for
    the pipeline, so its saved position (a few KB, whatever the records)
    names the pass, the files in the cycle and the records read of each, and
    restoring it re-reads those files. Ops downstream must support symbolic
    checkpoints (`map`, `batch`, `shuffle`, `prefetch`, `filter` do; `cache`,
    `rebatch` and `bucket_by_sequence_length` do not, and the position of such
    a pipeline is not saved: a resumed run replays).

    Memory: the `cycle_length` files being read are held whole (their
    serialized records, with a transient second copy while a file is
    permuted). Records mix across `cycle_length` files at a time and are
    fully shuffled within a file: write many shards of moderate size.

    Args:
      files: TFRecord file paths, or one glob pattern (its matches are sorted).
      seed: the order's seed; give the same one to every worker.
      cycle_length: files read at once (1 or more; at most the file count is used).
      input_context: the `build_*_dataset` hook's argument: with several input
        pipelines, pipeline i reads files i, i + n, ... of the n pipelines.
      compression_type: None, "", "ZLIB" or "GZIP", as for `TFRecordDataset`.

    Returns:
      An infinite dataset of scalar `tf.string` records; `map` a parser over it.

    Raises:
      ValueError: no files (or the pattern matches none), fewer files than input
        pipelines, `cycle_length` below 1, or an unknown `compression_type`.
      TypeError: `seed` or `cycle_length` is not an integer, or `files` holds
        something other than paths.
    """
    paths = _paths(files)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"shuffled_records(seed=...) must be an integer, got {type(seed).__name__}: {seed!r}")
    if isinstance(cycle_length, bool) or not isinstance(cycle_length, numbers.Integral):
        raise TypeError(f"shuffled_records(cycle_length=...) must be an integer, got {cycle_length!r}")
    if cycle_length < 1:
        raise ValueError(f"shuffled_records(cycle_length={cycle_length}) must be at least 1.")
    if compression_type not in _COMPRESSIONS:
        raise ValueError(
            f"shuffled_records(compression_type={compression_type!r}) must be one of {_COMPRESSIONS}."
        )
    if input_context is not None and input_context.num_input_pipelines > 1:
        pipelines = input_context.num_input_pipelines
        if len(paths) < pipelines:
            raise ValueError(
                f"shuffled_records() got {len(paths)} files for {pipelines} input pipelines (workers): "
                "each pipeline reads its own files, so write at least one shard per worker."
            )
        paths = paths[input_context.input_pipeline_id :: pipelines]

    names = tf.constant(paths)
    last_file = tf.constant(len(paths) - 1, tf.int64)
    key = tf.constant([int(seed), 0], tf.int64)

    def fold(seed_pair, value):
        return tf.random.experimental.stateless_fold_in(seed_pair, value, alg="philox")

    def permutation(last, seed_pair):  # of 0..last
        return tf.random.experimental.index_shuffle(tf.range(last + 1), seed_pair, last)

    def one_pass(pass_number):
        pass_key = fold(key, pass_number)

        def records(file_index):
            def permuted(whole_file):
                count = tf.size(whole_file, out_type=tf.int64)
                order = permutation(count - 1, fold(pass_key, file_index + 1))
                return tf.data.Dataset.from_tensor_slices(tf.gather(whole_file, order))

            # The file as one batch, not `get_single_element` (a stateful op tf.data will not
            # save): a symbolic checkpoint of the flat_map holds the records read, not the batch.
            reader = tf.data.TFRecordDataset(names[file_index], compression_type=compression_type)
            return reader.batch(_WHOLE_FILE).flat_map(permuted)

        file_order = tf.data.Dataset.from_tensor_slices(permutation(last_file, fold(pass_key, 0)))
        return file_order.interleave(records, cycle_length=min(cycle_length, len(paths)), block_length=1)

    options = tf.data.Options()
    options.experimental_symbolic_checkpoint = True
    stream = tf.data.Dataset.counter().flat_map(one_pass)
    stream = stream.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    return stream.with_options(options)


def _paths(files: str | Sequence[str]) -> list[str]:
    if isinstance(files, (str, bytes)):
        pattern = files.decode() if isinstance(files, bytes) else files
        paths = sorted(tf.io.gfile.glob(pattern))
        if not paths:
            raise ValueError(f"shuffled_records(files={pattern!r}): the pattern matches no file.")
        return paths
    paths = list(files)
    if not paths:
        raise ValueError("shuffled_records(files=[]): no files given.")
    for path in paths:
        if not isinstance(path, (str, bytes)):
            raise TypeError(
                f"shuffled_records(files=...) takes paths or one glob pattern, got an element "
                f"{type(path).__name__}: {path!r:.100}"
            )
    return [p.decode() if isinstance(p, bytes) else p for p in paths]
