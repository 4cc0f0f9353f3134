"""Byte-level language model: a decoder-only Transformer on the Python standard library.

Corpus: the `.py` files of the running interpreter's standard library
(`sysconfig.get_paths()["stdlib"]`, without site-packages), read as bytes:
vocabulary 256, no tokenizer. Files are split into train and eval by a hash
of their path, so evaluation reads modules the model never saw. Each split is
packed: files joined by a separator byte (0, absent from source text) and cut
into sequences of `seq_len + 1` bytes; the tail is padded and its padding
masked out of the loss and the metrics by per-token weights.

Model: token and learned position embeddings, pre-LayerNorm blocks of causal
self-attention (`keras.layers.MultiHeadAttention(use_causal_mask=True)`) and
a GELU MLP, a final LayerNorm and a float32 output projection. Reported:
cross-entropy, bits per byte (cross-entropy / ln 2) and perplexity, all
weighted by the padding mask. After every evaluation a greedy continuation
of a fixed prompt is logged and written as TensorBoard text (`<workdir>/samples`).

python experiments/lm.py --config=configs/lm.py --workdir=runs/lm
"""

from __future__ import annotations

import glob
import math
import os
import sysconfig
import zlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import framework
from common import batches
from framework import losses

VOCAB = 256
SEPARATOR = PAD = 0


def stdlib_files(root: str | None = None) -> list[str]:
    """The standard library's .py files (site-packages excluded), sorted."""
    root = root or sysconfig.get_paths()["stdlib"]
    files = glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
    return sorted(f for f in files if "site-packages" not in f and "dist-packages" not in f)


def split_files(files: list[str], eval_fraction: float) -> tuple[list[str], list[str]]:
    """(train, eval) by a hash of the path relative to the library root: stable across runs."""
    root = os.path.commonpath(files)
    bucket = [zlib.crc32(os.path.relpath(f, root).encode()) % 1000 for f in files]
    cut = int(eval_fraction * 1000)
    return [f for f, b in zip(files, bucket) if b >= cut], [f for f, b in zip(files, bucket) if b < cut]


def pack(files: list[str], seq_len: int, max_bytes: int) -> dict[str, np.ndarray]:
    """Files joined by SEPARATOR, cut into [n, seq_len + 1] rows; inputs, targets and a 0/1 mask.

    max_bytes: stop after about this many bytes (0: all). The last row is padded with PAD; its mask is 0.
    """
    chunks, total = [], 0
    for path in files:
        with open(path, "rb") as f:
            data = f.read().replace(bytes([SEPARATOR]), b"")
        chunks.append(data + bytes([SEPARATOR]))
        total += len(chunks[-1])
        if max_bytes and total >= max_bytes:
            break
    stream = np.frombuffer(b"".join(chunks), np.uint8)[: max_bytes or None]
    rows = math.ceil((len(stream) - 1) / seq_len)
    padded = np.full(rows * seq_len + 1, PAD, np.uint8)
    padded[: len(stream)] = stream
    valid = np.zeros(rows * seq_len + 1, np.float32)
    valid[1 : len(stream)] = 1.0  # a target position is real if its byte is
    starts = np.arange(rows) * seq_len
    window = starts[:, None] + np.arange(seq_len + 1)[None, :]
    tokens, mask = padded[window].astype(np.int32), valid[window][:, 1:]
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


class TransformerBlock(keras.layers.Layer):
    """Pre-LayerNorm block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attention = keras.layers.MultiHeadAttention(heads, dim // heads, dropout=dropout)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.mlp_in = keras.layers.Dense(mlp_ratio * dim, activation="gelu")
        self.mlp_out = keras.layers.Dense(dim)
        self.dropout = keras.layers.Dropout(dropout)

    def call(self, x, training=False):
        h = self.norm1(x)
        x = x + self.dropout(self.attention(h, h, use_causal_mask=True, training=training), training=training)
        return x + self.dropout(self.mlp_out(self.mlp_in(self.norm2(x))), training=training)


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position (0 .. max_len - 1) to its input."""

    def __init__(self, max_len: int, **kwargs):
        super().__init__(**kwargs)
        self.max_len = max_len

    def build(self, input_shape):
        self.table = self.add_weight(
            shape=(self.max_len, input_shape[-1]), initializer=keras.initializers.RandomNormal(stddev=0.02)
        )

    def call(self, x):
        length = keras.ops.shape(x)[1]
        return x + keras.ops.cast(self.table[:length], x.dtype)[None]


def transformer_lm(seq_len: int, dim: int, layers: int, heads: int, dropout: float = 0.0) -> keras.Model:
    tokens = keras.Input((None,), dtype="int32")
    x = PositionEmbedding(seq_len)(keras.layers.Embedding(VOCAB, dim)(tokens))
    for i in range(layers):
        x = TransformerBlock(dim, heads, dropout=dropout, name=f"block_{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    logits = keras.layers.Dense(VOCAB, dtype="float32", name="logits")(x)
    return keras.Model(tokens, logits, name="transformer_lm")


def token_cross_entropy(targets, logits):
    """Per-token cross-entropy in nats, [batch, seq_len]."""
    return keras.losses.sparse_categorical_crossentropy(tf.cast(targets, tf.int32), logits, from_logits=True)


class BitsPerByte(keras.metrics.Mean):
    """Mask-weighted mean cross-entropy over the tokens, in bits: nats / ln 2."""

    def __init__(self, name: str = "bits_per_byte", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(token_cross_entropy(y_true, y_pred) / math.log(2.0), sample_weight)


class Perplexity(keras.metrics.Mean):
    """exp of the mask-weighted mean token cross-entropy (per byte)."""

    def __init__(self, name: str = "perplexity", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(token_cross_entropy(y_true, y_pred), sample_weight)

    def result(self):
        return tf.exp(super().result())


class GreedySample(keras.callbacks.Callback):
    """After each evaluation: the greedy continuation of `prompt`, logged and written as TensorBoard text."""

    def __init__(self, trainer: LMTrainer, prompt: str, length: int):
        super().__init__()
        self.trainer, self.prompt, self.length = trainer, prompt.encode(), length
        self.samples: list[str] = []
        self._writer = None
        seq_len = trainer.config.model.seq_len

        @tf.function(input_signature=[tf.TensorSpec([1, seq_len], tf.int32), tf.TensorSpec([], tf.int32)])
        def next_byte(window, position):
            return tf.argmax(trainer.model(window, training=False)[0, position], output_type=tf.int32)

        self._next_byte = next_byte

    def generate(self) -> str:
        seq_len = self.trainer.config.model.seq_len
        out = list(self.prompt[-seq_len:])
        for _ in range(self.length):
            window = out[-seq_len:]
            padded = np.array([window + [PAD] * (seq_len - len(window))], np.int32)
            out.append(int(self._next_byte(padded, len(window) - 1)))  # causal: padding after is not seen
        return bytes(out[len(self.prompt) :]).decode("utf-8", errors="replace")

    def on_epoch_end(self, epoch, logs=None):
        t = self.trainer
        if "val_loss" not in (logs or {}) or not t.is_chief:
            return
        with framework.ema_weights(t.optimizer):
            text = self.generate()
        self.samples.append(text)
        logging.info("Sample at step %d: %r", t.step, self.prompt.decode() + text)
        if t.workdir:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(os.path.join(t.workdir, "samples"))
            with self._writer.as_default():
                markdown = "```\n" + self.prompt.decode() + text + "\n```"
                tf.summary.text("greedy_sample", markdown, step=t.step)
            self._writer.flush()


class LMTrainer(framework.Trainer):
    def __init__(self, config, workdir=None, **kwargs):
        data, seq_len = config.data, config.model.seq_len
        train_files, eval_files = split_files(stdlib_files(data.get("root") or None), data.eval_fraction)
        self.train_data = pack(train_files, seq_len, data.max_train_bytes)
        self.eval_data = pack(eval_files, seq_len, data.max_eval_bytes)
        self.sampler = None
        super().__init__(config, workdir, **kwargs)

    def build_model(self):
        cfg = self.config.model
        return transformer_lm(cfg.seq_len, cfg.dim, cfg.layers, cfg.heads, cfg.dropout)

    def build_loss(self):
        return losses.Term(token_cross_entropy, name="ce")

    def build_metrics(self):
        return [BitsPerByte(), Perplexity()]

    def build_callbacks(self):
        task = self.config.task
        self.sampler = self.sampler or GreedySample(self, task.prompt, task.sample_bytes)
        return [self.sampler]

    def _split(self, data):
        return (data["inputs"], data["targets"], data["mask"])

    def build_train_dataset(self, input_context):
        data, batch_size = self._split(self.train_data), self.config.batch_size
        return batches(data, input_context, batch_size, shuffle_seed=self.config.seed, endless=True)

    def build_eval_dataset(self, input_context):
        return batches(self._split(self.eval_data), input_context, self.config.batch_size)


if __name__ == "__main__":
    framework.run(LMTrainer)
