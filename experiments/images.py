"""Image classification: a ResNet on 32x32x3 images read from TFRecord shards.

The data (`scripts/make_images.py`): distorted, coloured, textured digits on
disk as TFRecord shards. The input pipeline is the one a researcher writes
for data that does not fit in memory: list the files, shard them across input
pipelines (workers), interleave their records, parse, augment (random crop of
the padded image; no flips: digits are not mirror-symmetric), batch, prefetch.

The model: a pre-activation-free ResNet (stem, three stages of residual
blocks with BatchNorm, global average pooling). With `config.model.sync_bn`
BatchNorm uses the statistics of the global batch (all replicas), so the run
does not depend on the number of replicas; without it each replica
normalises with its own share of the batch, as Keras does by default.

python scripts/make_images.py --out data/images --train 20000 --eval 4000 --shards 16
python experiments/images.py --config=configs/images.py --workdir=runs/images

The `:smoke` variant writes its small dataset (`config.data.make`: 2,000 train /
400 eval images, a few seconds) on first use; the full one says the command.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil

import keras
import tensorflow as tf
from absl import logging

import framework
from framework import losses

SIZE, CHANNELS, CLASSES = 32, 3, 10


def parse(record: tf.Tensor) -> dict[str, tf.Tensor]:
    features = tf.io.parse_single_example(
        record,
        {
            "image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64),
            "index": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    image = tf.reshape(tf.io.decode_raw(features["image"], tf.uint8), (SIZE, SIZE, CHANNELS))
    return {"image": tf.cast(image, tf.float32) / 255.0, "label": tf.cast(features["label"], tf.int32)}


def random_crop(image: tf.Tensor, seed: tf.Tensor, padding: int) -> tf.Tensor:
    """A SIZE x SIZE crop of the image padded by `padding` (edge-replicated), stateless in `seed`."""
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], mode="SYMMETRIC")
    return tf.image.stateless_random_crop(padded, (SIZE, SIZE, CHANNELS), seed=seed)


def shard_files(pattern: str, input_context: tf.distribute.InputContext) -> list[str]:
    """This input pipeline's files: every num_input_pipelines-th file of the sorted list.

    Raises:
      FileNotFoundError: nothing matches `pattern`.
      ValueError: fewer files than input pipelines (some would read nothing).
    """
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"No files match {pattern!r}. Write them with "
            f"`python scripts/make_images.py --out {os.path.dirname(pattern)}`."
        )
    pipelines = input_context.num_input_pipelines
    if len(files) < pipelines:
        raise ValueError(
            f"{len(files)} file(s) match {pattern!r} but there are {pipelines} input pipelines "
            "(workers): each needs at least one file. Write more shards (make_images.py --shards) "
            "or use fewer workers."
        )
    return files[input_context.input_pipeline_id :: pipelines]


def make_images_module():
    """`scripts/make_images.py` as a module (scripts/ is not a package)."""
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "make_images.py"
    )
    spec = importlib.util.spec_from_file_location("make_images", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_data(directory: str, make: dict, *, on_first_use: bool) -> None:
    """Writes `make_images.make(directory, **make)` when `directory` holds no shards yet (`on_first_use`).

    Several workers may start at once: each writes a directory of its own and
    renames it into place; the first rename wins and the others drop theirs.

    Raises:
      FileNotFoundError: no shards and not `on_first_use`; the message is the command that writes them.
    """
    if glob.glob(os.path.join(directory, "train-*.tfrecord")):
        return
    order = ["train", "eval", "shards", "seed"]  # the script's own order; a ConfigDict sorts its keys
    keys = sorted(make, key=lambda k: order.index(k) if k in order else len(order))
    command = f"python scripts/make_images.py --out {directory} " + " ".join(f"--{k} {make[k]}" for k in keys)
    if not on_first_use:
        raise FileNotFoundError(f"No image shards in {directory!r}. Write them with `{command}`.")
    logging.info("No image shards in %s: writing them (%s).", directory, command)
    partial = f"{directory.rstrip(os.sep)}.tmp-{os.getpid()}"
    make_images_module().make(partial, **make)
    try:
        os.rename(partial, directory)  # replaces an empty directory
    except OSError:  # another worker's rename came first
        shutil.rmtree(partial, ignore_errors=True)
        if not glob.glob(os.path.join(directory, "train-*.tfrecord")):
            raise


def image_dataset(
    pattern: str,
    input_context: tf.distribute.InputContext,
    batch_size: int,
    *,
    seed: int,
    train: bool,
    augment: bool = True,
    shuffle_buffer: int = 4096,
    crop_padding: int = 4,
    endless: bool = False,
) -> tf.data.Dataset:
    """Per-replica batches of (image, label) from the TFRecord files matching `pattern`.

    batch_size: the global batch. Each pipeline reads its own files (for
      evaluation with fewer files than pipelines: every pipeline reads them
      all and keeps every k-th record) and batches its share (batch_size / pipelines); the replicas it feeds get
      consecutive slices of that batch, so with one pipeline a global batch
      holds the same images on one device and on N replicas. Training drops a
      short last batch (conv gradients fail on a replica's empty batch).
    train: shuffle (files and records) and drop a short last batch.
    augment: random crops of the image padded by `crop_padding`.
    seed: fixes the file order, the shuffle and the crops (different every epoch).
    endless: (train) an endless stream for a step-based run: `shuffled_records`,
      a new order each pass and a saved position of a few KB (no shuffle
      buffer of images in the checkpoint); crops seeded by the example's
      position in the stream.
    """
    pipelines = input_context.num_input_pipelines
    matched = sorted(glob.glob(pattern))
    # Evaluation reads every example once: with fewer files than pipelines, each keeps every k-th record.
    by_record = not train and 0 < len(matched) < pipelines
    files = matched if by_record else shard_files(pattern, input_context)
    if train and endless:
        cycle = min(len(files), 4)
        dataset = framework.data.shuffled_records(files, seed, cycle_length=cycle)
        dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        positions = tf.data.Dataset.counter()
        crop_seeds = positions.map(lambda i: tf.stack([tf.cast(seed, tf.int64), i]))
    else:
        dataset = tf.data.Dataset.from_tensor_slices(files)
        if train:
            dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 4),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if by_record:
            dataset = dataset.shard(pipelines, input_context.input_pipeline_id)
        if train:
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        crop_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    if augment:

        def crop(example, crop_seed):
            return random_crop(example["image"], crop_seed, crop_padding), example["label"]

        dataset = tf.data.Dataset.zip(dataset, crop_seeds).map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    else:

        def pair(example):
            return example["image"], example["label"]

        dataset = dataset.map(pair)
    local = tf.distribute.InputContext(
        num_input_pipelines=1,
        input_pipeline_id=0,
        num_replicas_in_sync=input_context.num_replicas_in_sync // pipelines,
    )
    dataset = framework.distribute.global_batches(
        dataset, local, batch_size // pipelines, drop_remainder=train
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def standardize(images):
    """Per image and channel: zero mean, unit variance."""
    mean = keras.ops.mean(images, axis=(1, 2), keepdims=True)
    std = keras.ops.std(images, axis=(1, 2), keepdims=True)
    return (images - mean) / (std + 1e-3)


def resnet(widths: tuple, blocks: tuple, *, sync_bn: bool, stem_stride: int = 1) -> keras.Model:
    """A CIFAR-style ResNet: stem conv, stages of basic blocks (each stage after the first halves the size).

    stem_stride: 2 runs the whole network at half resolution (a quarter of the compute).
    """

    def norm(x):
        return keras.layers.BatchNormalization(momentum=0.9, synchronized=sync_bn)(x)

    def conv(x, filters, strides=1, kernel=3):
        return keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False)(x)

    def block(x, filters, strides):
        shortcut = x
        y = keras.layers.ReLU()(norm(conv(x, filters, strides)))
        y = norm(conv(y, filters))
        if strides != 1 or x.shape[-1] != filters:
            shortcut = norm(conv(x, filters, strides, kernel=1))
        return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))

    inputs = keras.Input((SIZE, SIZE, CHANNELS))
    # Each image standardised on its own: colours and brightness vary from image to image.
    x = keras.layers.Lambda(standardize)(inputs)
    x = keras.layers.ReLU()(norm(conv(x, widths[0], stem_stride)))
    for stage, (filters, count) in enumerate(zip(widths, blocks)):
        for i in range(count):
            x = block(x, filters, strides=2 if stage > 0 and i == 0 else 1)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(CLASSES, dtype="float32")(x)  # logits in float32 under mixed precision
    return keras.Model(inputs, outputs, name="resnet")


class ImagesTrainer(framework.Trainer):
    def build_model(self):
        cfg = self.config.model
        return resnet(tuple(cfg.widths), tuple(cfg.blocks), sync_bn=cfg.sync_bn, stem_stride=cfg.stem_stride)

    def build_loss(self):
        smoothing = self.config.task.label_smoothing

        def smoothed_ce(labels, logits):
            one_hot = tf.one_hot(tf.cast(labels, tf.int32), CLASSES)
            return keras.losses.categorical_crossentropy(
                one_hot, logits, from_logits=True, label_smoothing=smoothing
            )

        return losses.Term(smoothed_ce, name="ce")

    def build_optimizer(self):
        optimizer = super().build_optimizer()
        # Decay the conv and dense kernels only, as is usual for ResNets: not BatchNorm's scale and shift.
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        return optimizer

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def _dataset(self, split, input_context, *, train):
        data = self.config.data
        ensure_data(data.dir, dict(data.get("make", {})), on_first_use=data.get("make_on_first_use", False))
        return image_dataset(
            os.path.join(data.dir, f"{split}-*.tfrecord"),
            input_context,
            self.config.batch_size,
            seed=self.config.seed,
            train=train,
            augment=train and data.augment,
            shuffle_buffer=data.shuffle_buffer,
            endless=train and self.config.train_steps > 0,
        )

    def build_train_dataset(self, input_context):
        return self._dataset("train", input_context, train=True)

    def build_eval_dataset(self, input_context):
        return self._dataset("eval", input_context, train=False)


if __name__ == "__main__":
    framework.run(ImagesTrainer)
