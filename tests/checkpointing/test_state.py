"""What a checkpoint holds: models that are not trained stay out; the trained ones resume exactly."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import losses
from framework.checkpointing import checkpoint

from toys import ArrayTrainer, blobs, config, mlp, weights_of


class Distiller(ArrayTrainer):
    """Keras' distillation recipe: a trained teacher comes in; only the student learns."""

    def __init__(self, cfg, teacher, **kwargs):
        self.teacher = teacher
        self.kd = losses.Term(keras.losses.KLDivergence(), name="kd")
        super().__init__(cfg, **kwargs)

    def train_step(self, batch):
        x, y = batch
        soft = tf.nn.softmax(self.teacher(x, training=False) / 2.0)
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            ce, logs = self.compute_loss(y, logits)
            kd, kd_logs = self.compute_loss(soft, tf.nn.softmax(logits / 2.0), loss=self.kd, prefix="kd_")
            loss = ce + kd
        self.apply_gradients(tape, loss)
        self.update_metrics(y, logits)
        return {**logs, **kd_logs}


class SavesTheTeacher(Distiller):
    checkpoint_include = ("teacher",)


def _teacher():
    return mlp(hidden=512, seed=7)


def _distiller(cls, workdir, epochs):
    return cls(
        config(epochs=epochs), _teacher(), data=blobs(n=96), model_fn=mlp, shuffle=True, workdir=str(workdir)
    )


def _layout(workdir):
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config().checkpoint, writer=False)
    try:
        return ckpts.read_meta(ckpts.steps()[-1])["layout"]
    finally:
        ckpts.close()


def _bytes(workdir):
    root = os.path.join(workdir, "checkpoints")
    last = max(int(n) for n in os.listdir(root) if n.isdigit())
    return sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(os.path.join(root, str(last)))
        for f in files
    )


def test_a_teacher_given_to_the_constructor_is_left_out_and_the_student_resumes_exactly(tmp_path):
    straight = _distiller(Distiller, tmp_path / "straight", 4)
    straight.fit()
    _distiller(Distiller, tmp_path / "split", 2).fit()
    resumed = _distiller(Distiller, tmp_path / "split", 4)
    resumed.fit()
    assert resumed.resumed_at_step == 12 and resumed.step == 24
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(straight.model), weights_of(resumed.model)))
    assert not np.array_equal(weights_of(straight.model)[0], weights_of(mlp())[0])  # it trained

    teacher_bytes = sum(np.asarray(v).nbytes for v in _teacher().variables)
    saved = _distiller(SavesTheTeacher, tmp_path / "with_teacher", 1)
    saved.fit()
    assert "attr.teacher" not in _layout(tmp_path / "straight")
    assert len(_layout(tmp_path / "with_teacher")["attr.teacher"]) == len(saved.teacher.variables)
    assert (
        _bytes(tmp_path / "with_teacher") - _bytes(tmp_path / "straight") >= 0.5 * teacher_bytes
    )  # compressed


class FrozenEncoder(ArrayTrainer):
    """A frozen encoder built in a hook, and a discriminator-like model another optimizer trains."""

    def build_model(self):
        self.encoder = mlp(classes=6, hidden=8, seed=3)
        self.encoder.trainable = False
        self.critic = mlp(hidden=8, seed=4)
        return super().build_model()

    def build_optimizer(self):
        self.critic_optimizer = self.add_optimizer(keras.optimizers.SGD(0.1), self.critic, name="critic")
        return super().build_optimizer()

    def train_step(self, batch):
        x, y = batch
        with tf.GradientTape() as tape:
            loss, logs = self.compute_loss(y, self.critic(self.encoder(x), training=True))
        self.apply_gradients(tape, loss, optimizer=self.critic_optimizer)
        return {**logs, **super().train_step(batch)}


def test_frozen_models_are_left_out_trained_ones_kept_and_the_lists_override(tmp_path):
    FrozenEncoder(config(), data=blobs(n=32), model_fn=mlp, workdir=str(tmp_path / "a")).fit()
    layout = _layout(tmp_path / "a")
    assert "attr.encoder" not in layout and len(layout["attr.critic"]) == 4

    class KeepEncoder(FrozenEncoder):
        checkpoint_include = ("encoder",)
        checkpoint_exclude = ("critic",)

    KeepEncoder(config(), data=blobs(n=32), model_fn=mlp, workdir=str(tmp_path / "b")).fit()
    layout = _layout(tmp_path / "b")
    assert len(layout["attr.encoder"]) == 4 and "attr.critic" not in layout

    class Misspelt(FrozenEncoder):
        checkpoint_exclude = ("encodr",)

    with pytest.raises(ValueError, match=r"checkpoint_exclude names 'encodr'.*encoder"):
        Misspelt(config(), data=blobs(n=32), model_fn=mlp, workdir=str(tmp_path / "c")).fit()
