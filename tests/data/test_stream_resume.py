"""An endless training input resumes from its saved position, to the weights of an unbroken run.

Each case trains 4 epochs of 5 steps straight, and 2 epochs then (a new
Trainer on the same workdir) 4, with metrics and checkpoints every 3 steps,
on the conv net and pipelines of tests/stream_cases.py. The resumed run must
end on bitwise the same weights, and must have restored its input position
(a replay would be exact too, only slower); reshuffling pipelines shaped as
the README's table says are restored too. A generator pipeline, and a
reshuffled pipeline batched before it is repeated, say why they cannot be
restored and resume by replay. Two worker processes are compared
with one process, and two workers reading their own shards with an unbroken
two-worker run; every worker must say it restored its position (slow).

The unbroken one-process runs (the oracles) are epoch-based, without a workdir
(nothing saved, the same calls), and each is trained once per module: a
step-based resume and the two-worker cases compare with the same run.
"""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import stream_cases
import tensorflow as tf
from timeouts import seconds

from framework.data import input_positions

from toys import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
    return stream_cases.write_shards(str(tmp_path_factory.mktemp("shards")))


def _fit(workdir, pipeline, epochs, replicas, pattern, **overrides):
    config = stream_cases.config(pipeline, epochs=epochs, replicas=replicas, pattern=pattern, **overrides)
    trainer = stream_cases.StreamTrainer(config, workdir and str(workdir))
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def straight(pattern):
    """straight(pipeline, replicas): (step, weights) of 4 epochs of 5 steps unbroken, in this
    process, without a workdir; each trained once per module."""
    runs = {}

    def get(pipeline, replicas):
        if (pipeline, replicas) not in runs:
            trainer = _fit(None, pipeline, 4, replicas, pattern)
            runs[pipeline, replicas] = trainer.step, trainer.model.get_weights()
        return runs[pipeline, replicas]

    return get


def _stop_and_resume(tmp_path, pipeline, replicas, pattern, caplog, straight, *, step_based=False):
    """2 periods of 5 steps, then (a new Trainer on the same workdir) 4: the weights of 4 epochs straight.

    step_based: periods of `eval_every_steps` in a step-based run, which the
    second fit continues by raising `train_steps`.
    """

    def fit(workdir, periods):
        return _fit(workdir, pipeline, periods, replicas, pattern, step_based=step_based)

    straight_step, straight_weights = straight(pipeline, replicas)
    fit(tmp_path / "split", 2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        resumed = fit(tmp_path / "split", 4)
    assert resumed.step == straight_step == 20
    same = [np.array_equal(a, b) for a, b in zip(straight_weights, resumed.model.get_weights(), strict=True)]
    assert all(same), same
    return resumed


@pytest.mark.parametrize(
    "pipeline, replicas",
    [("array", 1), ("records", 2), ("reshuffle", 1), ("records_reshuffle", 1), ("repeat_reshuffle", 1),
     pytest.param("array", 2, marks=pytest.mark.slow), pytest.param("records", 1, marks=pytest.mark.slow),
     pytest.param("reshuffle", 2, marks=pytest.mark.slow),
     pytest.param("records_reshuffle", 2, marks=pytest.mark.slow), ("records_indexed", 1),
     pytest.param("records_indexed", 2, marks=pytest.mark.slow)],
)  # fmt: skip
def test_resume_restores_the_input_position_and_matches_an_unbroken_run(
    tmp_path, pattern, caplog, straight, pipeline, replicas
):
    _stop_and_resume(tmp_path, pipeline, replicas, pattern, caplog, straight)
    assert "restored the input position of step 10" in caplog.text
    assert "replaying" not in caplog.text
    saved = os.listdir(tmp_path / "split" / "checkpoints" / "input")
    kept = [n for n in os.listdir(tmp_path / "split" / "checkpoints") if n.isdigit()]
    assert sorted(saved) == sorted(kept)  # dropped with their checkpoints


@pytest.mark.parametrize(
    "pipeline, replicas",
    [
        ("reshuffle", 1),
        ("records_reshuffle", 1),
        ("records_indexed", 1),
        pytest.param("records_reshuffle", 2, marks=pytest.mark.slow),
    ],
)
def test_a_step_based_run_restores_the_position_of_a_reshuffling_pipeline(
    tmp_path, pattern, caplog, straight, pipeline, replicas
):
    _stop_and_resume(tmp_path, pipeline, replicas, pattern, caplog, straight, step_based=True)
    assert "restored the input position of step 10" in caplog.text
    assert "replaying" not in caplog.text


def test_global_shuffle_saves_a_position_of_about_a_kilobyte(tmp_path, pattern, caplog, straight):
    _stop_and_resume(tmp_path, "global", 1, pattern, caplog, straight)
    assert "restored the input position of step 10" in caplog.text
    directory = tmp_path / "split" / "checkpoints" / "input" / "20"
    size = sum(f.stat().st_size for f in directory.iterdir())
    assert size < 4096, sorted((f.name, f.stat().st_size) for f in directory.iterdir())


@pytest.mark.parametrize(
    "pipeline, reason",
    [("generator", "PyFunc is stateful"), ("batched_reshuffle", "batched before it is repeated")],
)
def test_an_input_tf_data_cannot_restore_names_why_and_resumes_exactly_by_replay(
    tmp_path, pattern, caplog, straight, pipeline, reason
):
    _stop_and_resume(tmp_path, pipeline, 1, pattern, caplog, straight)
    reasons = [r.getMessage() for r in caplog.records if "cannot be saved" in r.getMessage()]
    assert len(reasons) == 1 and reason in reasons[0], reasons  # the resumed run's one line
    assert "resumed by replaying 10 batches" in caplog.text
    assert not (tmp_path / "split" / "checkpoints" / "input").exists()


def test_only_a_reshuffle_batched_then_repeated_is_flagged():
    def flagged(dataset):
        reason = input_positions.unsavable_reason(dataset)
        return reason is not None and "batched before it is repeated" in reason

    numbers = tf.data.Dataset.range(50)
    reshuffled = numbers.shuffle(10, seed=1, reshuffle_each_iteration=True)
    assert flagged(reshuffled.batch(4).repeat())
    assert flagged(reshuffled.batch(4).map(lambda b: b * 2).repeat())
    assert not flagged(reshuffled.repeat().batch(4))
    assert not flagged(numbers.repeat().shuffle(10, seed=1, reshuffle_each_iteration=True).batch(4))
    assert not flagged(numbers.shuffle(10, seed=1, reshuffle_each_iteration=False).batch(4).repeat())
    assert not flagged(reshuffled.batch(4))  # iterated once


def _start(runs, strategy, tf_config=None):
    """One process running `runs` (dicts: see tests/stream_cases.py) one after another."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    args = [
        sys.executable, os.path.join(ROOT, "tests", "stream_cases.py"), f"--strategy={strategy}",
        f"--runs={json.dumps(runs)}",
    ]  # fmt: skip
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _start_two_workers(runs):
    """Workers 0 and 1 of a new cluster, both running `runs`; "{i}" in a run's `out` is the worker's index."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [
        _start(
            [{**run, "out": run["out"].format(i=i)} for run in runs],
            "multi_worker",
            tf_config=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        )  # fmt: skip
        for i in range(2)
    ]


def _finish(processes, timeout=1800):
    errors = []
    try:
        for p in processes:
            errors.append(p.communicate(timeout=seconds(timeout))[1])
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, err in zip(processes, errors):
        assert p.returncode == 0, err[-4000:]
    return errors


def _assert_restored(errors, step):
    for i, err in enumerate(errors):
        assert f"restored the input position of step {step}" in err, (i, err[-3000:])
        assert "replaying" not in err, (i, err[-3000:])


WORKER_PIPELINES = {"reshuffle": False, "records_reshuffle": True, "records_indexed": True}  # step_based


@pytest.fixture(scope="module")
def two_worker_runs(tmp_path_factory, pattern):
    """Every two-worker case in two worker pairs, as a user's runs would be split: a pair running
    each of WORKER_PIPELINES' first 2 periods, and the sharded case's first 2 and its unbroken 4;
    then a fresh pair resuming each to 4 periods. (The one-process oracle of each pipeline is
    `straight`.) Returns the temporary directory, each worker run's log per worker (by run name),
    and what the checkpoints held between the two pairs."""
    tmp = tmp_path_factory.mktemp("two_workers")
    sharded = stream_cases.write_shards(str(tmp / "shards"), shards=5)

    def run(name, pipeline, epochs, workdir, *, step_based=True, shards=pattern):
        os.makedirs(tmp / name, exist_ok=True)
        return name, {
            "pipeline": pipeline, "pattern": shards, "workdir": str(tmp / "workdirs" / workdir), "epochs": epochs,
            "out": str(tmp / name / "w{i}.npz"), "step_based": step_based,
        }  # fmt: skip

    pipelines = WORKER_PIPELINES.items()
    first = [run(f"{p}/first", p, 2, f"{p}/workers", step_based=b) for p, b in pipelines]
    first += [
        run("sharded/first", "records_sharded", 2, "sharded/workers", shards=sharded),
        run("sharded/unbroken", "records_sharded", 4, "sharded/unbroken", shards=sharded),
    ]
    second = [run(f"{p}/resumed", p, 4, f"{p}/workers", step_based=b) for p, b in pipelines]
    second += [run("sharded/resumed", "records_sharded", 4, "sharded/workers", shards=sharded)]

    logs = {}

    def run_pair(runs):
        errors = _finish(_start_two_workers([r for _, r in runs]))
        per_worker = [stream_cases.logs_by_run(err, len(runs)) for err in errors]
        for index, (name, _) in enumerate(runs):
            logs[name] = [worker[index] for worker in per_worker]

    run_pair(first)
    between = {
        p: sorted(os.listdir(tmp / "workdirs" / p / "workers" / "checkpoints" / "input" / "10"))
        for p, _ in pipelines
    }
    positions = tmp / "workdirs" / "sharded" / "workers" / "checkpoints" / "input" / "10"
    between["sharded"] = [(positions / f"worker-{i}.data-00000-of-00001").read_bytes() for i in range(2)]
    run_pair(second)
    return tmp, logs, between


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", list(WORKER_PIPELINES))
def test_two_workers_resume_their_own_positions_to_one_process_weights(two_worker_runs, straight, pipeline):
    tmp, logs, between = two_worker_runs
    _assert_restored(logs[f"{pipeline}/resumed"], 10)
    # each worker saved its own position
    assert between[pipeline] == [
        f"worker-{i}.{ext}" for i in range(2) for ext in ("data-00000-of-00001", "index")
    ]
    one_step, one = straight(pipeline, 1)
    for i in range(2):
        got = np.load(tmp / pipeline / "resumed" / f"w{i}.npz")
        assert int(got["step"]) == one_step == 20
        assert len(got.files) == len(one) + 1  # the weights and the step
        diff = max(float(np.max(np.abs(got[f"w{k}"] - w))) for k, w in enumerate(one))
        assert diff <= 1e-5, (i, diff)


@pytest.mark.slow
def test_two_workers_reading_their_own_shards_resume_to_an_unbroken_runs_weights(two_worker_runs):
    """Each worker streams its own shards: 3 files (58 records) and 2 (38), so at the save one
    worker is in its first pass and the other in its second. A worker that restored the other's
    position, or none, would train on other batches."""
    tmp, logs, between = two_worker_runs
    first, second = between["sharded"]
    assert first != second
    _assert_restored(logs["sharded/resumed"], 10)
    want = np.load(tmp / "sharded" / "unbroken" / "w0.npz")
    for i in range(2):
        got = np.load(tmp / "sharded" / "resumed" / f"w{i}.npz")
        assert int(got["step"]) == int(want["step"]) == 20
        for key in want.files:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"worker {i}, {key}")
