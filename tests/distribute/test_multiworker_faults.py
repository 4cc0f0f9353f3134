"""Two real worker processes on 127.0.0.1 when things go wrong, and a real experiment on two.

A worker killed (the other exits, naming it; a rerun resumes), a worker
preempted (SIGTERM to one: both save at one step and exit 0; a rerun resumes; one
worker pair reruns both);
workers with uneven inputs; experiments/images.py preempted and resumed on two
workers. All slow (CI runs them, `-m "not slow"` skips them). Apart from
tests/distribute/test_multiworker.py so that pytest-xdist can run the two files at once.
"""

# ---- faults ---------------------------------------------------------------------------------

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import uneven_workers
from timeouts import seconds
from workers import ROOT, check_ok, finish, load, logged_step, start, start_workers, two_workers, wait_for

TOLERANCE = 1e-5
SLOW_STEPS = ("--step_seconds=0.15", f"--peer_timeout_secs={round(seconds(10))}")


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    """The one-process run of `long`, started now and waited for on first use: it trains while
    the fault tests' workers start and sleep through their slow steps."""
    tmp = tmp_path_factory.mktemp("long")
    reference = start(["long"], tmp / "ref", tmp / "ref.json", strategy="one_device")
    result = {}

    def wait():
        if not result:
            check_ok([reference], finish([reference]))
            result.update(load(tmp / "ref.json")["long"])
        return result

    yield wait
    if reference.poll() is None:  # a test failed before waiting for it
        finish([reference], timeout=1)


def _has_checkpoint(workdir):
    directory = workdir / "checkpoints"
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


@contextlib.contextmanager
def _one_worker_signalled(root, tmp, case, signum, ready):
    """Two slow-stepping workers on `case` (`long@...`); yields them and the time worker 1 got
    `signum`, sent once `ready(workdir)` holds. Whatever still runs on exit is killed."""
    workers = start_workers([case], root, tmp, tag=f"_{case}", extra=SLOW_STEPS)
    workdir = root / case.replace("@", "-")
    try:
        wait_for(lambda: ready(workdir), ready.__name__, workers)
        workers[1].send_signal(signum)
        yield workers, time.monotonic()
    finally:
        finish(workers, timeout=1)


def _kill_one(root, tmp):
    with _one_worker_signalled(root, tmp, "long@killed", signal.SIGKILL, _has_checkpoint) as (workers, at):
        # Bounded: the peer timeout ends it; a hang fails the test, naming the wait.
        _, err = workers[0].communicate(timeout=seconds(300))
        return {"returncode": workers[0].returncode, "stderr": err, "took": time.monotonic() - at}


def _preempt_one(root, tmp):
    with _one_worker_signalled(root, tmp, "long@preempted", signal.SIGTERM, logged_step) as (workers, at):
        errors = [w.communicate(timeout=seconds(300))[1] for w in workers]
        took = time.monotonic() - at
    directory = root / "long-preempted" / "checkpoints"
    return {
        "returncodes": [w.returncode for w in workers],
        "stderr": errors,
        "took": took,
        "saved": sorted(int(n) for n in os.listdir(directory) if n.isdigit()),
        "finished": os.path.exists(tmp / "w0_long@preempted.json"),
    }


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, long_reference):
    """`long` on two workers twice, each run in its own workdir: worker 1 killed after the first
    checkpoint, and worker 1 sent SIGTERM once training has logged. Then one worker pair reruns
    both workdirs to the end (the same command for each, in one pair of processes).
    Returns {fault: what the interrupted run did, or the error that ended it} and the rerun's
    results per worker. Starts `long_reference` first: it trains while these workers run."""
    tmp = tmp_path_factory.mktemp("faults")
    root = tmp / "mw"
    faults = {}
    for fault, run in (("killed", _kill_one), ("preempted", _preempt_one)):
        try:
            faults[fault] = run(root, tmp)
        except Exception as error:  # noqa: BLE001 - reported by the fault's own test
            faults[fault] = {"error": f"{type(error).__name__}: {error}"}
    resumable = [f"long@{fault}" for fault, got in faults.items() if "error" not in got]
    if not resumable:
        return faults, None
    workers = start_workers(resumable, root, tmp, tag="_rerun")
    check_ok(workers, finish(workers))
    return faults, [load(tmp / f"w{index}_rerun.json") for index in range(2)]


def _assert_rerun_resumed(interrupted, fault, long_reference):
    faults, rerun = interrupted
    assert "error" not in faults[fault], faults[fault]["error"]
    reference = long_reference()
    for index in range(2):
        got = rerun[index][f"long@{fault}"]
        assert got["step"] == reference["step"]
        for i, (g, w) in enumerate(zip(got["weights"], reference["weights"])):
            np.testing.assert_allclose(np.array(g), np.array(w), atol=TOLERANCE, err_msg=f"weight {i}")


@pytest.mark.slow
def test_a_killed_worker_ends_the_others_in_bounded_time_and_a_rerun_resumes(interrupted, long_reference):
    killed = interrupted[0]["killed"]
    assert "error" not in killed, killed["error"]
    assert killed["returncode"] != 0
    assert "/job:worker/replica:0/task:1" in killed["stderr"], killed["stderr"][-3000:]
    print(f"surviving worker exited {killed['took']:.1f}s after its peer was killed")
    _assert_rerun_resumed(interrupted, "killed", long_reference)


@pytest.mark.slow
def test_sigterm_to_one_worker_saves_once_at_an_agreed_step_and_a_rerun_resumes(interrupted, long_reference):
    preempted = interrupted[0]["preempted"]
    assert "error" not in preempted, preempted["error"]
    errors = preempted["stderr"]
    for returncode, err in zip(preempted["returncodes"], errors):
        assert returncode == 0, err[-4000:]
    steps = [re.findall(r"Preempted: saved step (\d+)", err) for err in errors]
    assert steps[0] and steps[0] == steps[1], (steps, [err[-3000:] for err in errors])
    assert int(steps[0][0]) == preempted["saved"][-1]
    assert not preempted["finished"]  # preempted before the case finished
    print(f"both workers saved step {steps[0][0]} and exited 0, {preempted['took']:.1f}s after SIGTERM")
    _assert_rerun_resumed(interrupted, "preempted", long_reference)


# ---- uneven inputs ----------------------------------------------------------------------------


UNEVEN_MODES = ("eval", "read_on", "train")  # train last: both workers refuse it and exit


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """tests/uneven_workers.py's modes in one worker pair; returns the directory, the return codes
    and each worker's log by mode."""
    tmp = tmp_path_factory.mktemp("uneven")
    script = os.path.join(ROOT, "tests", "uneven_workers.py")
    args = [
        sys.executable,
        script,
        f"--modes={','.join(UNEVEN_MODES)}",
        f"--root={tmp}",
        f"--out={tmp}/{{{{mode}}}}{{i}}.json",
    ]
    workers = two_workers(args)
    errors = finish(workers, timeout=600)
    return tmp, [p.returncode for p in workers], [uneven_workers.logs_by_mode(err) for err in errors]


def _assert_mode_ended(logs, mode):
    for err in logs:
        assert f"{mode} done" in err.get(mode, ""), err.get(mode, "")[-4000:]


@pytest.mark.slow
def test_uneven_evaluation_batches_evaluate_every_example_once_and_uneven_training_is_refused(uneven):
    """Worker 0 has 5 evaluation batches and worker 1 has 3 (it runs two steps on batches of no rows):
    the logged and returned values are Keras' over all 64 examples. Uneven training data would make
    one worker wait for the other's missing steps: both say so before training."""
    tmp_path, returncodes, logs = uneven
    _assert_mode_ended(logs, "eval")
    for i in range(2):
        got = load(tmp_path / f"eval{i}.json")
        want = got["keras"]
        for values in (got["history"][-1], {f"val/{k}": v for k, v in got["evaluate"].items()}):
            assert values["val/accuracy"] == pytest.approx(want["accuracy"], abs=1e-7)
            assert values["val/loss"] == pytest.approx(want["loss"], abs=1e-6)
    assert "uneven steps (worker 0: 5, worker 1: 3); all run 5" in logs[0]["eval"]

    for returncode, err in zip(returncodes, (log["train"] for log in logs)):
        assert returncode != 0
        assert "train done" not in err
        assert "different numbers of steps per pass (worker 0: 6, worker 1: 4)" in err, err[-3000:]
        assert "set config.steps_per_epoch" in err
    assert not os.path.exists(tmp_path / "train" / "checkpoints")


@pytest.mark.slow
def test_uneven_workers_with_steps_per_epoch_each_read_on_through_their_own_data(uneven):
    """Worker 0 has 6 training batches and worker 1 has 2; steps_per_epoch=2 for 3 epochs: each
    worker reads on and starts its next pass where its own data runs out. Worker 1's pass is an
    epoch, but it cycles its input as worker 0 must, so that both run the same compiled calls.
    Reference: Keras' fit (SGD, one device) on the global batches that makes
    (tests/uneven_workers.py)."""
    tmp_path, _, logs = uneven
    _assert_mode_ended(logs, "read_on")
    for i in range(2):
        got = load(tmp_path / f"read_on{i}.json")
        assert len(got["history"]) == 3
        assert got["max_abs_diff"] <= 1e-6, (i, got["max_abs_diff"])
    for i, steps in enumerate((6, 2)):
        assert (
            f"steps_per_epoch=2 and build_train_dataset() yields {steps} steps per pass" in logs[i]["read_on"]
        )


# ---- a real experiment ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_images_experiment_on_two_workers_resumes_after_sigterm_to_the_unbroken_runs_evaluations(
    tmp_path,
):
    """experiments/images.py as a user starts it on two workers (strategy "auto" under TF_CONFIG):
    each worker streams its own training shards; the one eval file is shared by records. SIGTERM to
    worker 1 mid-run, a rerun of the same command, and every evaluation equals an unbroken run's."""
    spec = importlib.util.spec_from_file_location(
        "make_images", os.path.join(ROOT, "scripts", "make_images.py")
    )
    make_images = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_images)
    shards = make_images.make(str(tmp_path / "shards"), train=2000, eval=400, shards=4)

    def start(workdir):
        return two_workers(
            [
                sys.executable,
                "experiments/images.py",
                "--config=configs/images.py:smoke,sync_bn",
                f"--workdir={workdir}",
                f"--config.data.dir={shards}",
                "--config.train_steps=40",
                "--config.eval_every_steps=10",
                "--config.log_every_steps=5",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
        )

    unbroken, broken = start(tmp_path / "unbroken"), start(tmp_path / "broken")
    try:
        wait_for(lambda: logged_step(tmp_path / "broken", 15), "train record at step 15", broken)
        broken[1].send_signal(signal.SIGTERM)
        errors = finish(broken, timeout=300)
    finally:
        finish(broken, timeout=1)
    check_ok(broken, errors)
    assert all("Preempted: saved step" in err for err in errors), [err[-2000:] for err in errors]
    assert "this is worker 1" in errors[1]
    rerun = start(tmp_path / "broken")
    errors = finish(rerun, timeout=600)
    check_ok(rerun, errors)
    for err in errors:
        assert "restored the input position" in err and "replaying" not in err, err[-3000:]
    check_ok(unbroken, finish(unbroken, timeout=600))

    def evaluations(workdir):
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return {
            r["step"]: {k: v for k, v in r.items() if k.startswith("val/")}
            for r in rows
            if r["kind"] == "eval"
        }

    want, got = evaluations(tmp_path / "unbroken"), evaluations(tmp_path / "broken")
    assert sorted(want) == sorted(got) == [10, 20, 30, 40]
    for step, values in want.items():  # the loss mean's float32 sums may group differently
        assert got[step]["val/accuracy"] == values["val/accuracy"], step
        assert got[step]["val/loss"] == pytest.approx(values["val/loss"], rel=1e-6, abs=0), step
