"""The host loop on its own: a Controller driving a stub runner (no model, no training step).

The stub's "step" consumes one batch (a single number: the batch's index,
1-based) and logs it as its loss, so every expectation below is computed
from the batch indices alone: where log points fall, what their means are,
which steps are checkpointed, and which batches a resumed run reads.
"""

import contextlib
import json
import os
import signal
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import framework
from framework.checkpointing import checkpoint
from framework.loop import runner
from framework.loop.controller import Controller
from framework.outputs import run_log as logs

from toys import ArrayTrainer, blobs, config, mlp

BATCHES = 7  # per epoch: odd, so calls and log points do not line up with the epoch's end


class StubStep:
    """`fn(iterator, n)`: n steps, each reading one batch and logging it as `loss`."""

    def __init__(self, stub):
        self.stub, self.traced = stub, 0

    def __call__(self, iterator, num_steps):
        n = int(num_steps)
        self.traced = 1
        self.stub.calls.append((self.stub.step, n))
        values = [float(next(iterator).numpy()[0]) for _ in range(n)]
        self.stub.seen.extend(values)
        self.stub.counter.assign_add(n)
        self.stub.weight.assign_add(sum(values))
        sums = logs.Sums({"loss": np.array([[sum(values)], [float(n)]])}, n)
        return sums, {"loss": values[-1]}, None

    def experimental_get_tracing_count(self) -> int:
        return self.traced


class StubRunner:
    """Everything `framework.loop.runner.Runner` lists, in plain Python around two variables."""

    def __init__(self, workdir=None, **config):
        self.config = framework.config.resolve(
            {"batch_size": 1, "steps_per_execution": 2, "log_every_steps": 3, **config}
        )
        self.workdir = workdir
        self.strategy = tf.distribute.get_strategy()
        self.is_chief = True
        self.model = types.SimpleNamespace(stop_training=False, optimizer=None)
        self.optimizer = types.SimpleNamespace()
        self.epoch = 0
        self.resumed_at_step = 0
        self.counter = tf.Variable(0, dtype=tf.int64)
        self.weight = tf.Variable(0.0)  # the sum of every batch trained on: checks restores
        self.calls, self.seen, self.phases, self.callbacks = [], [], [], []
        self.resets = 0

    @property
    def step(self) -> int:
        return int(self.counter.numpy())

    def build_train_dataset(self, input_context):
        batches = tf.data.Dataset.range(1, BATCHES + 1).map(lambda i: tf.cast(i, tf.float32))
        return batches.batch(1, drop_remainder=True)

    def build_eval_dataset(self, input_context):
        return None

    def build_callbacks(self):
        return list(self.callbacks)

    def check_train_input(self, element_spec, first_batches):
        pass

    def build_state(self, element_spec):
        pass

    def checkpoint_state(self):
        return {"model": [self.weight], "trainer": [self.counter]}

    def run_record(self):
        return self.config.to_dict()

    def set_step(self, step):
        self.counter.assign(step)

    def make_train_function(self):
        return StubStep(self)

    def make_eval_function(self):
        raise AssertionError("no evaluation here")

    def make_predict_function(self):
        raise AssertionError("no prediction here")

    def fit_schedules(self, total_updates):
        self.total_updates = total_updates

    def nonfinite_step(self):
        return -1

    def clear_nonfinite(self):
        pass

    def loss_term_of(self, key):
        return None

    def optimizer_logs(self):
        return {"lr": 0.5}

    def reset_metrics(self, phase="train"):
        self.resets += 1

    def metric_results(self, phase="train"):
        return {}

    @contextlib.contextmanager
    def eval_phase(self):
        self.phases.append("eval")
        yield


def records(workdir, kind):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_the_stub_and_a_trainer_are_runners():
    assert isinstance(StubRunner(), runner.Runner)
    assert isinstance(ArrayTrainer(config(), data=blobs(n=32), model_fn=mlp), runner.Runner)


def test_log_points_fall_every_log_every_steps_and_at_epoch_ends_with_exact_means(tmp_path):
    stub = StubRunner(str(tmp_path), epochs=2)
    history = Controller(stub).fit()
    assert stub.step == 2 * BATCHES and stub.seen == list(range(1, BATCHES + 1)) * 2
    ends = {BATCHES, 2 * BATCHES}
    expected = sorted(s for s in range(1, 2 * BATCHES + 1) if s % 3 == 0 or s in ends)
    points = records(str(tmp_path), "train")
    assert [p["step"] for p in points] == expected
    # Each point's loss is the mean of the batches since the previous point.
    batch_at = {s: stub.seen[s - 1] for s in range(1, 2 * BATCHES + 1)}
    previous = 0
    for point in points:
        window = [batch_at[s] for s in range(previous + 1, point["step"] + 1)]
        assert point["loss"] == pytest.approx(np.mean(window)) and point["lr"] == 0.5
        previous = point["step"]
    assert [h["loss"] for h in history] == [pytest.approx(np.mean(range(1, BATCHES + 1)))] * 2
    # No compiled call is longer than steps_per_execution or crosses a log point or an epoch's end.
    for start, n in stub.calls:
        assert 1 <= n <= 2
        assert not any(start < boundary < start + n for boundary in expected)
    assert stub.resets == 2 and stub.total_updates == 2 * BATCHES


def test_checkpoints_every_steps_and_at_epoch_ends_then_resume_mid_run(tmp_path):
    workdir = str(tmp_path)
    checkpoints = {"every_steps": 4, "max_to_keep": 10, "async_save": False, "min_interval_secs": 0}
    options = {"epochs": 2, "checkpoint": checkpoints}
    first = StubRunner(workdir, **options)
    Controller(first).fit()
    ckpts = checkpoint.Checkpoints(
        os.path.join(workdir, "checkpoints"), first.config.checkpoint, writer=False
    )
    assert ckpts.steps() == [4, 7, 8, 12, 14]  # every 4 steps, and every epoch's end
    ckpts.close()
    again = StubRunner(workdir, epochs=3, checkpoint=options["checkpoint"])
    Controller(again).fit()
    assert again.resumed_at_step == 2 * BATCHES
    assert again.seen == list(range(1, BATCHES + 1))  # only the third epoch
    assert float(again.weight.numpy()) == 3 * sum(range(1, BATCHES + 1))  # restored, then trained on


def test_sigterm_saves_mid_epoch_and_a_rerun_replays_the_epoch_to_the_next_batch(tmp_path):
    workdir = str(tmp_path)
    options = {"epochs": 2, "checkpoint": {"async_save": False}}
    stub = StubRunner(workdir, **options)
    stub.callbacks = [
        framework.Periodic(lambda t, step, logs: os.kill(os.getpid(), signal.SIGTERM), every_steps=9)
    ]
    with pytest.raises(SystemExit) as exit_info:
        Controller(stub).fit()
    assert exit_info.value.code == 0 and stub.step == 9
    resumed = StubRunner(workdir, **options)
    Controller(resumed).fit()
    assert resumed.resumed_at_step == 9 and resumed.step == 2 * BATCHES
    assert resumed.seen == list(range(3, BATCHES + 1))  # epoch 2 from its third batch (step 10)
    assert float(resumed.weight.numpy()) == 2 * sum(range(1, BATCHES + 1))
    # The epoch's mean covers the batches before the preemption too.
    last_epoch = records(workdir, "epoch")[-1]
    assert last_epoch["step"] == 2 * BATCHES
    assert last_epoch["loss"] == pytest.approx(np.mean(range(1, BATCHES + 1)))


def test_a_sigterm_handled_just_after_the_workers_agreed_preempts_at_the_next_agreement(
    tmp_path, monkeypatch
):
    """Under several workers the main thread waits in the agreement's all-reduce; a SIGTERM that
    arrives then runs its handler as soon as the all-reduce returns, before the result is stored."""
    signalled_at, agree = [], framework.distribute.mean_over_workers

    def signalled_during(strategy, values):
        result = agree(strategy, values)
        if stub.step == 3 and not signalled_at:
            signalled_at.append(stub.step)
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, after the values were read
        return result

    monkeypatch.setattr(framework.distribute, "mean_over_workers", signalled_during)
    options = {"epochs": 2, "steps_per_execution": 1, "checkpoint": {"async_save": False}}
    stub = StubRunner(str(tmp_path), **options)
    with pytest.raises(SystemExit) as exit_info:
        Controller(stub).fit()
    assert signalled_at == [3]
    assert exit_info.value.code == 0 and stub.step == 4  # the agreement after step 4 saw the flag
    ckpts = checkpoint.Checkpoints(
        os.path.join(str(tmp_path), "checkpoints"), stub.config.checkpoint, writer=False
    )
    assert ckpts.steps() == [4]
    ckpts.close()


def test_keras_batch_hooks_periodic_hooks_and_early_stop(tmp_path):
    batches, epochs, periodic = [], [], []
    stub = StubRunner(None, epochs=5)

    def on_epoch_end(epoch, logs):
        epochs.append(epoch)
        if epoch == 1:
            stub.model.stop_training = True

    stub.callbacks = [
        keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: batches.append((batch, logs["loss"])),
            on_epoch_end=on_epoch_end,
        ),
        framework.Periodic(lambda t, step, logs: periodic.append(step), every_steps=4),
    ]
    history = Controller(stub).fit()
    assert len(history) == 2 and epochs == [0, 1] and stub.step == 2 * BATCHES
    assert periodic == [4, 8, 12]
    # A batch hook per compiled call, with the index of its last batch in the epoch and its loss:
    # at a log point the mean since the previous point, otherwise the call's own mean.
    expected, since = [], 0
    for start, n in stub.calls:
        end = start + n
        at_point = end % 3 == 0 or end % BATCHES == 0
        window = stub.seen[since:end] if at_point else stub.seen[start:end]
        expected.append(((end - 1) % BATCHES, pytest.approx(np.mean(window))))
        since = end if at_point else since
    assert batches == expected
