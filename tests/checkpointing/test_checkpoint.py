"""Checkpoints: exact resume after SIGKILL/SIGTERM, fallback, keep-best, modes."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from timeouts import seconds

from framework.checkpointing import checkpoint
from framework.trainer import modes

from toys import ArrayTrainer, blobs, config, mlp, weights_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "resume_run.py")
STEPS_PER_EPOCH = 100  # tests/resume_run.py: 1600 examples in batches of 16


def _start(workdir, *flags, mode="train"):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(os.path.join(str(workdir) + ".log"), "a")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, SCRIPT, f"--config={SCRIPT}", f"--workdir={workdir}", f"--mode={mode}", *flags],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip


def _wait_for(condition, proc, timeout=600.0, poll=0.001):
    deadline = time.monotonic() + seconds(timeout)
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise TimeoutError(f"condition {condition} not reached after {seconds(timeout):.0f}s")


def _train_records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if '"kind": "train"' in line)


def _tmp_dirs(workdir):
    ckpt = os.path.join(workdir, "checkpoints")
    return [n for n in os.listdir(ckpt) if "tmp" in n] if os.path.isdir(ckpt) else []


def _steps(workdir):
    ckpt = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []


def _weights(workdir):
    with np.load(os.path.join(workdir, "weights.npz")) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_killed_and_preempted_runs_resume_to_bitwise_identical_weights(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    ref = _start(reference)
    rng = random.Random(0)
    kills = []

    # SIGKILL at random moments while training.
    for _ in range(2):
        proc = _start(interrupted)
        seen = _train_records(interrupted)
        if _wait_for(lambda s=seen: _train_records(interrupted) > s, proc):
            time.sleep(rng.uniform(0.0, 0.25))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills.append("random")
        proc.wait()

    # SIGKILL in the middle of an asynchronous save.
    proc = _start(interrupted)
    if _wait_for(lambda: bool(_tmp_dirs(interrupted)), proc):
        proc.send_signal(signal.SIGKILL)
        kills.append("mid-save")
        proc.wait()
        assert _tmp_dirs(interrupted), "the kill should leave an unfinished save behind"
    proc.wait()

    # SIGTERM: finish the step group, save at the current step, exit 0.
    before = _steps(interrupted)
    proc = _start(interrupted, "--config.checkpoint.every_steps=0", "--config.checkpoint.every_epochs=0")
    seen = _train_records(interrupted)
    assert _wait_for(lambda: _train_records(interrupted) > seen + 1, proc), "run ended before SIGTERM"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=seconds(300)) == 0  # SIGTERM ends the run: a hang fails here
    new = [s for s in _steps(interrupted) if s not in before]
    assert len(new) == 1 and new[0] > max(before or [0]), (before, _steps(interrupted))
    assert not _tmp_dirs(interrupted)

    # Rerun with the same command to the end.
    assert _start(interrupted).wait(timeout=seconds(900)) == 0
    assert ref.wait(timeout=seconds(900)) == 0
    assert kills == ["random", "random", "mid-save"], kills
    got, want = _weights(interrupted), _weights(reference)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def _trainer(workdir, **overrides):
    x, y = blobs(n=96)
    ex, ey = blobs(n=48, seed=5)
    cfg = config(**{"epochs": 3, "steps_per_execution": 2, **overrides})
    return ArrayTrainer(
        cfg, data=(x, y), eval_data=(ex, ey), model_fn=mlp, shuffle=True, workdir=str(workdir),
        metrics=lambda: [keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )  # fmt: skip


def test_fit_on_a_finished_run_restores_and_trains_nothing(tmp_path):
    first = _trainer(tmp_path)
    first.fit()
    again = _trainer(tmp_path)
    assert again.fit() == []
    assert again.step == first.step == 18
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(first.model), weights_of(again.model)))


def test_resume_across_processes_matches_in_epoch_boundaries(tmp_path):
    straight = _trainer(tmp_path / "straight", epochs=4)
    straight.fit()
    split = _trainer(tmp_path / "split", epochs=2)
    split.fit()
    resumed = _trainer(tmp_path / "split", epochs=4)
    history = resumed.fit()
    assert len(history) == 2 and resumed.step == straight.step
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(straight.model), weights_of(resumed.model)))


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    done = _trainer(tmp_path, epochs=3)
    done.fit()
    assert _steps(tmp_path) == [6, 12, 18]
    state_dir = tmp_path / "checkpoints" / "18" / "state"
    for root, _, files in os.walk(state_dir):
        for name in files:
            if name != "_METADATA":
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    os.makedirs(tmp_path / "checkpoints" / "24.orbax-checkpoint-tmp-1234")  # a leftover unfinished save
    resumed = _trainer(tmp_path, epochs=4)
    resumed.fit()
    assert "is unreadable" in caplog.text and "18" in caplog.text
    kept = [n for n in os.listdir(tmp_path / "checkpoints") if n.startswith("18.unreadable-")]
    assert len(kept) == 1  # set aside, not deleted
    assert _steps(tmp_path) == [12, 18, 24] and not _tmp_dirs(tmp_path)
    clean = _trainer(tmp_path / "clean", epochs=4)
    clean.fit()
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(clean.model), weights_of(resumed.model)))


def test_checkpoint_of_another_model_is_refused_and_left_untouched(tmp_path):
    _trainer(tmp_path).fit()
    before = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(tmp_path) for p in fs}
    x, y = blobs(n=96)
    other = ArrayTrainer(
        config(epochs=3), data=(x, y), model_fn=lambda: mlp(hidden=32), workdir=str(tmp_path)
    )
    with pytest.raises(
        checkpoint.CheckpointMismatch,
        match=r"model\[0\] .*kernel: checkpoint .* has shape \(6, 16\), this run's has \(6, 32\)",
    ):
        other.fit()
    after = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(tmp_path) for p in fs}
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == {
        k: v for k, v in before.items() if k != "metrics.jsonl"
    }


def test_keep_best_keeps_the_newest_and_the_best(tmp_path):
    trainer = _trainer(
        tmp_path, epochs=5, **{"checkpoint.max_to_keep": 1, "checkpoint.best_metric": "val/loss",
                               "checkpoint.best_mode": "max"},
    )  # fmt: skip
    history = trainer.fit()
    worst_epoch = int(np.argmax([h["val/loss"] for h in history]))
    best_step = (worst_epoch + 1) * 6
    assert set(_steps(tmp_path)) == {best_step, 30}
    again = _trainer(
        tmp_path, epochs=5, **{"checkpoint.best_metric": "val/loss", "checkpoint.best_mode": "max"}
    )
    assert again.restore("best") == best_step


def test_export_round_trips_and_eval_mode_reads_a_step(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.fit()
    path = modes.export(_trainer(tmp_path))
    assert path.endswith(os.path.join("export", "18")) and os.path.exists(
        os.path.join(path, "saved_model.pb")
    )
    evaluator = _trainer(tmp_path)
    results = modes.evaluate_checkpoint(evaluator, 12)
    assert evaluator.step == 12
    assert set(results) >= {"loss", "acc"}


@pytest.mark.slow
def test_continuous_eval_sees_every_checkpoint_once(tmp_path):
    workdir = tmp_path / "run"
    evaluator = _start(workdir, f"--eval_timeout_secs={seconds(600)}", mode="continuous_eval")
    time.sleep(1.0)
    trainer = _start(workdir, "--config.epochs=2", f"--config.checkpoint.every_steps={STEPS_PER_EPOCH // 5}")
    assert trainer.wait(timeout=seconds(900)) == 0
    assert evaluator.wait(timeout=seconds(900)) == 0
    with open(workdir / "metrics.jsonl") as f:
        evaluated = [json.loads(line)["step"] for line in f if '"kind": "eval"' in line]
    assert evaluated == _steps(workdir) == sorted(set(evaluated))
    assert evaluated[-1] == 2 * STEPS_PER_EPOCH


class NoisyTrainer(ArrayTrainer):
    """Adds noise from its own tf.random.Generator in the step: its state must be checkpointed."""

    def __init__(self, *args, **kwargs):
        self.noise = tf.random.Generator.from_seed(3)
        super().__init__(*args, **kwargs)

    def train_step(self, batch):
        x, y = batch
        return super().train_step((x + self.noise.normal(tf.shape(x)), y))


def test_a_trainers_own_random_generator_resumes_exactly(tmp_path):
    def make(workdir, epochs):
        x, y = blobs(n=96)
        return NoisyTrainer(config(epochs=epochs), data=(x, y), model_fn=mlp, workdir=str(workdir))

    straight = make(tmp_path / "straight", 4)
    straight.fit()
    make(tmp_path / "split", 2).fit()
    resumed = make(tmp_path / "split", 4)
    resumed.fit()
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(straight.model), weights_of(resumed.model)))
    fresh = make(tmp_path / "fresh", 2)
    fresh.fit()  # without the generator's state, the resumed run would redraw these numbers
    assert not np.array_equal(fresh.noise.state.numpy(), make(tmp_path / "other", 2).noise.state.numpy())


def test_a_best_metric_that_is_never_logged_is_named_in_a_warning(tmp_path, caplog):
    x, y = blobs(n=96)
    ex, ey = blobs(n=48, seed=9)
    cfg = config(epochs=2, **{"checkpoint.best_metric": "val/loss/ce"})  # a one-term loss logs val/loss only
    ArrayTrainer(cfg, data=(x, y), eval_data=(ex, ey), model_fn=mlp, workdir=str(tmp_path)).fit()
    assert "best_metric='val/loss/ce' is not among the values logged" in caplog.text
    assert "val/loss" in caplog.text


def test_min_interval_skips_epoch_saves_but_saves_the_end_and_a_second_fit_resumes_exactly(tmp_path):
    # Within checkpoint.min_interval_secs, only the final state is saved; without it, every epoch.
    every_epoch = _trainer(tmp_path / "every_epoch", epochs=3)
    every_epoch.fit()
    assert _steps(tmp_path / "every_epoch") == [6, 12, 18]
    spaced = _trainer(tmp_path / "spaced", epochs=2, **{"checkpoint.min_interval_secs": 3600})
    spaced.fit()
    assert _steps(tmp_path / "spaced") == [12]
    # A second fit() of the same trainer saves its end too (and the saved state resumes exactly).
    with spaced.config.unlocked():
        spaced.config.epochs = 3
    spaced.fit()
    assert _steps(tmp_path / "spaced") == [12, 18]
    resumed = _trainer(tmp_path / "spaced", epochs=3, **{"checkpoint.min_interval_secs": 3600})
    assert resumed.fit() == [] and resumed.step == 18
    for trained in (spaced, resumed):
        assert all(
            np.array_equal(a, b) for a, b in zip(weights_of(every_epoch.model), weights_of(trained.model))
        )


@pytest.mark.slow
def test_sigterm_within_the_min_interval_saves_and_the_rerun_ends_bitwise_equal(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    spaced = ("--config.epochs=2", "--config.checkpoint.min_interval_secs=3600")
    ref = _start(reference, *spaced)
    proc = _start(interrupted, *spaced)
    assert _wait_for(lambda: _train_records(interrupted) > 2, proc), "run ended before SIGTERM"
    assert _steps(interrupted) == []  # every_steps=20 saves are within the interval: none yet
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=seconds(300)) == 0
    saved = _steps(interrupted)
    assert len(saved) == 1 and 0 < saved[0] < 2 * STEPS_PER_EPOCH, saved  # the SIGTERM step, before the end
    assert _start(interrupted, *spaced).wait(timeout=seconds(900)) == 0
    assert ref.wait(timeout=seconds(900)) == 0
    assert _steps(interrupted)[-1] == _steps(reference)[-1] == 2 * STEPS_PER_EPOCH
    got, want = _weights(interrupted), _weights(reference)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
