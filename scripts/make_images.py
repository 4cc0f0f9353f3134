"""Writes a 10-class 32x32x3 image dataset as TFRecord shards, offline and deterministic.

    python scripts/make_images.py --out data/images                      # 50k train / 10k eval
    python scripts/make_images.py --out /tmp/images --train 2000 --eval 400 --shards 4

Each image is one of scikit-learn's bundled 8x8 handwritten digits, upscaled
and placed on a 32x32 canvas with a random affine distortion (rotation,
scale, shear, shift), a random ink colour over a random background colour
with a low-frequency texture, and pixel noise. The label is the digit. Train
and eval images come from disjoint writers' digits (a stratified split of the
1,797 originals), so eval accuracy measures generalisation to new handwriting,
not memorised glyphs. The same seed gives the same bytes.

Records: `image` (3072 raw uint8 bytes, HWC), `label` (int64), `index` (int64,
the image's position in its split). Files: `<out>/{train,eval}-0000i-of-0000n.tfrecord`.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

SIZE = 32
CLASSES = 10


def digit_split(seed: int):
    """Scikit-learn's digits as [n, 8, 8] floats in [0, 1] and labels, split 80/20 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).reshape(-1, 8, 8).astype("float32")
    return train_test_split(images, labels, test_size=0.2, random_state=seed, stratify=labels)


def render(glyphs: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator):
    """`count` distorted, coloured, textured images (uint8 [count, 32, 32, 3]) and their labels."""
    from scipy import ndimage

    picks = rng.integers(0, len(glyphs), count)
    rows, cols = np.mgrid[:SIZE, :SIZE].astype("float32") / SIZE
    out = np.empty((count, SIZE, SIZE, 3), "uint8")
    centre = np.array([SIZE / 2, SIZE / 2])
    for i, pick in enumerate(picks):
        angle = rng.uniform(-0.35, 0.35)
        scale = rng.uniform(2.6, 3.6)  # 8 px glyph -> 21-29 px
        shear = rng.uniform(-0.25, 0.25)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        forward = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
        inverse = np.linalg.inv(forward)  # output pixel -> glyph pixel
        shift = rng.uniform(-3.0, 3.0, 2)
        offset = np.array([3.5, 3.5]) - inverse @ (centre + shift)
        ink = ndimage.affine_transform(glyphs[pick], inverse, offset, output_shape=(SIZE, SIZE), order=1)
        ink = np.clip(ink, 0.0, 1.0)[..., None]
        fx, fy, phase = rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0), rng.uniform(0, 2 * np.pi)
        texture = 0.5 + 0.5 * np.sin(2 * np.pi * (fx * rows + fy * cols) + phase)
        background = rng.uniform(0.0, 1.0, 3) * (0.6 + 0.4 * texture[..., None])
        colour = rng.uniform(0.0, 1.0, 3)
        while np.abs(colour - background.mean((0, 1))).sum() < 0.6:  # keep the glyph visible
            colour = rng.uniform(0.0, 1.0, 3)
        image = ink * colour + (1.0 - ink) * background + rng.normal(0.0, 0.06, (SIZE, SIZE, 3))
        out[i] = np.clip(image * 255.0, 0, 255).astype("uint8")
    return out, labels[picks].astype("int64")


def write_split(out: str, split: str, images: np.ndarray, labels: np.ndarray, shards: int) -> list[str]:
    import tensorflow as tf

    def feature(values, kind):
        return tf.train.Feature(**{kind: values})

    paths = []
    for shard in range(shards):
        path = os.path.join(out, f"{split}-{shard:05d}-of-{shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for index in range(shard, len(images), shards):
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "image": feature(
                                tf.train.BytesList(value=[images[index].tobytes()]), "bytes_list"
                            ),
                            "label": feature(tf.train.Int64List(value=[labels[index]]), "int64_list"),
                            "index": feature(tf.train.Int64List(value=[index]), "int64_list"),
                        }
                    )
                )
                writer.write(example.SerializeToString())
        paths.append(path)
    return paths


def make(out: str, *, train: int = 50_000, eval: int = 10_000, shards: int = 16, seed: int = 0) -> str:
    """Writes the train and eval shards (eval gets max(1, shards // 4)); returns `out`.

    Raises:
      ValueError: a count or the shard number is not positive.
    """
    for name, value in (("train", train), ("eval", eval), ("shards", shards)):
        if value < 1:
            raise ValueError(f"make_images: {name} must be >= 1, got {value}.")
    os.makedirs(out, exist_ok=True)
    train_glyphs, eval_glyphs, train_labels, eval_labels = digit_split(seed)
    rng = np.random.default_rng(seed)
    images, labels = render(train_glyphs, train_labels, train, rng)
    write_split(out, "train", images, labels, shards)
    images, labels = render(eval_glyphs, eval_labels, eval, rng)
    write_split(out, "eval", images, labels, max(1, shards // 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--eval", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=16, help="train shards (eval: shards // 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make(args.out, train=args.train, eval=args.eval, shards=args.shards, seed=args.seed)
    print(f"wrote {args.train} train / {args.eval} eval images to {args.out}")


if __name__ == "__main__":
    main()
