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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
    return stream_cases.write_shards(str(tmp_path_factory.mktemp("shards")))


def _fit(workdir, pipeline, epochs, replicas, pattern, **overrides):
    config = stream_cases.config(pipeline, epochs=epochs, replicas=replicas, pattern=pattern, **overrides)
    trainer = stream_cases.StreamTrainer(config, str(workdir))
    trainer.fit()
    return trainer


def _stop_and_resume(tmp_path, pipeline, replicas, pattern, caplog, *, step_based=False):
    """4 periods of 5 steps straight, and 2 then (a new Trainer on the same workdir) 4: equal weights.

    step_based: periods of `eval_every_steps` in a step-based run, which the
    second fit continues by raising `train_steps`.
    """

    def fit(workdir, periods):
        return _fit(workdir, pipeline, periods, replicas, pattern, step_based=step_based)

    straight = fit(tmp_path / "straight", 4)
    fit(tmp_path / "split", 2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        resumed = fit(tmp_path / "split", 4)
    assert resumed.step == straight.step == 20
    same = [np.array_equal(a, b) for a, b in zip(straight.model.get_weights(), resumed.model.get_weights())]
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
    tmp_path, pattern, caplog, pipeline, replicas
):
    _stop_and_resume(tmp_path, pipeline, replicas, pattern, caplog)
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
    tmp_path, pattern, caplog, pipeline, replicas
):
    _stop_and_resume(tmp_path, pipeline, replicas, pattern, caplog, step_based=True)
    assert "restored the input position of step 10" in caplog.text
    assert "replaying" not in caplog.text


def test_global_shuffle_saves_a_position_of_about_a_kilobyte(tmp_path, pattern, caplog):
    _stop_and_resume(tmp_path, "global", 1, pattern, caplog)
    assert "restored the input position of step 10" in caplog.text
    directory = tmp_path / "split" / "checkpoints" / "input" / "20"
    size = sum(f.stat().st_size for f in directory.iterdir())
    assert size < 4096, sorted((f.name, f.stat().st_size) for f in directory.iterdir())


@pytest.mark.parametrize(
    "pipeline, reason",
    [("generator", "PyFunc is stateful"), ("batched_reshuffle", "batched before it is repeated")],
)
def test_an_input_tf_data_cannot_restore_names_why_and_resumes_exactly_by_replay(
    tmp_path, pattern, caplog, pipeline, reason
):
    _stop_and_resume(tmp_path, pipeline, 1, pattern, caplog)
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


def _run_worker(pipeline, pattern, workdir, epochs, strategy, out, tf_config=None, step_based=False):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    args = [
        sys.executable, os.path.join(ROOT, "tests", "stream_cases.py"), f"--pipeline={pipeline}",
        f"--pattern={pattern}", f"--workdir={workdir}", f"--epochs={epochs}", f"--strategy={strategy}",
        f"--out={out}", *(["--step_based"] if step_based else []),
    ]  # fmt: skip
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run_two_workers(pipeline, pattern, workdir, epochs, out, *, step_based):
    """Workers 0 and 1 of a new cluster; worker i writes its weights to `out.format(i=i)`."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [
        _run_worker(
            pipeline,
            pattern,
            workdir,
            epochs,
            "multi_worker",
            str(out).format(i=i),
            tf_config=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            step_based=step_based,
        )  # fmt: skip
        for i in range(2)
    ]


def _finish(processes, timeout=900):
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "pipeline, step_based", [("reshuffle", False), ("records_reshuffle", True), ("records_indexed", True)]
)
def test_two_workers_resume_their_own_positions_to_one_process_weights(
    tmp_path, pattern, pipeline, step_based
):
    one = tmp_path / "one.npz"
    reference = _run_worker(pipeline, pattern, tmp_path / "one", 4, "one_device", one, step_based=step_based)
    workdir = tmp_path / "workers"
    for epochs in (2, 4):
        out = tmp_path / f"w{{i}}-{epochs}.npz"
        workers = _run_two_workers(pipeline, pattern, workdir, epochs, out, step_based=step_based)
        errors = _finish(workers)
        if epochs == 4:
            _assert_restored(errors, 10)
        if epochs == 2:  # each worker saved its own position
            saved = sorted(os.listdir(workdir / "checkpoints" / "input" / "10"))
            assert saved == [
                f"worker-{i}.{ext}" for i in range(2) for ext in ("data-00000-of-00001", "index")
            ]
    _finish([reference])
    one = np.load(tmp_path / "one.npz")
    for i in range(2):
        got = np.load(tmp_path / f"w{i}-4.npz")
        assert int(got["step"]) == int(one["step"]) == 20
        diff = max(float(np.max(np.abs(got[k] - one[k]))) for k in one.files if k != "step")
        assert diff <= 1e-5, (i, diff)


@pytest.mark.slow
def test_two_workers_reading_their_own_shards_resume_to_an_unbroken_runs_weights(tmp_path):
    """Each worker streams its own shards: 3 files (58 records) and 2 (38), so at the save one
    worker is in its first pass and the other in its second. A worker that restored the other's
    position, or none, would train on other batches."""
    pattern = stream_cases.write_shards(str(tmp_path / "shards"), shards=5)

    def run(workdir, epochs, tag):
        return _run_two_workers(
            "records_sharded", pattern, workdir, epochs, tmp_path / f"{tag}-w{{i}}.npz", step_based=True
        )

    unbroken = run(tmp_path / "unbroken", 4, "unbroken")
    _finish(run(tmp_path / "resumed", 2, "first"))
    positions = tmp_path / "resumed" / "checkpoints" / "input" / "10"
    first, second = ((positions / f"worker-{i}.data-00000-of-00001").read_bytes() for i in range(2))
    assert first != second
    resumed = run(tmp_path / "resumed", 4, "resumed")
    _finish(unbroken)
    _assert_restored(_finish(resumed), 10)
    want = np.load(tmp_path / "unbroken-w0.npz")
    for i in range(2):
        got = np.load(tmp_path / f"resumed-w{i}.npz")
        assert int(got["step"]) == int(want["step"]) == 20
        for key in want.files:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"worker {i}, {key}")
