"""Two real worker processes on 127.0.0.1 against one process on the same global batches.

Each case of tests/multiworker_cases.py trains under MultiWorkerMirroredStrategy
in two worker processes and under OneDeviceStrategy in a reference process;
the workers share their processes across cases. Both workers must end on the
reference's weights, log its values, take its steps. Then faults: a worker
killed (the other exits, naming it; a rerun resumes), a worker preempted
(SIGTERM to one: both save at one step and exit 0; a rerun resumes).
Everything here is marked slow (each group starts three TensorFlow processes:
minutes); CI runs it, `-m "not slow"` skips it. The quick two-worker run with a
metric and checkpoints is tests/test_distribute.py.
"""

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
from timeouts import seconds

from toys import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "multiworker_cases.py")
MATRIX = (
    "metrics", "f1", "heads", "eval_best_midepoch", "ema_accum", "mixed_overflow", "nan_skip", "nan_restore",
    "callbacks", "gan",
)  # fmt: skip
MATRIX += ("contrastive", "contrastive_step")  # NT-Xent over the global batch; tests/test_contrastive.py
EXPERIMENTS = (
    "digits",
    "imbalanced",
    "segmentation",
    "multitask",
    "metric_learning",
    "ranking",
    "gan",
)
SMOKE = tuple(f"smoke/{name}" for name in EXPERIMENTS)
TOLERANCE = 1e-5
# float16 sums of half batches differ from the full batch's in the last float16 digit
FLOAT16_TOLERANCE = {"mixed_overflow": 1e-4}


def _env(tf_config=None):
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start(cases, root, out, *, strategy, tf_config=None, extra=()):
    args = [
        sys.executable, SCRIPT, f"--strategy={strategy}", f"--root={root}", f"--cases={','.join(cases)}",
        f"--out={out}", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=_env(tf_config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_workers(cases, root, tmp, *, tag="", extra=()):
    """Two worker processes on loopback; each writes its results to tmp/w<index><tag>.json."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [
        _start(
            cases,
            root,
            tmp / f"w{i}{tag}.json",
            strategy="multi_worker",
            extra=extra,
            tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}},
        )  # fmt: skip
        for i in range(2)
    ]


def finish(processes, timeout=900):
    """Waits for every process; returns their stderr. Kills them all if one hangs."""
    outputs = []
    try:
        for p in processes:
            outputs.append(p.communicate(timeout=seconds(timeout))[1])
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outputs


def check_ok(processes, errors):
    for p, err in zip(processes, errors):
        assert p.returncode == 0, err[-4000:]


def load(path):
    with open(path) as f:
        return json.load(f)


def records(workdir):
    """metrics.jsonl without wall-clock values."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in ("time", "steps_per_sec")} for r in rows]


def assert_close_logs(got, want, where, tol=TOLERANCE):
    assert len(got) == len(want), f"{where}: {len(got)} records, reference {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert set(g) == set(w), f"{where}[{i}]: keys differ: {sorted(set(g) ^ set(w))}"
        for key, value in w.items():
            if isinstance(value, (int, float)) and np.isnan(value):
                assert np.isnan(g[key]), f"{where}[{i}][{key!r}]: {g[key]} vs {value}"
            elif isinstance(value, (int, float)):
                assert abs(g[key] - value) <= tol * max(1.0, abs(value)), (
                    f"{where}[{i}][{key!r}]: {g[key]} vs {value}"
                )
            else:
                assert g[key] == value, f"{where}[{i}][{key!r}]: {g[key]} vs {value}"


def assert_same_run(got, want, where, tol=TOLERANCE):
    assert got["step"] == want["step"] and got["epoch"] == want["epoch"], where
    assert len(got["weights"]) == len(want["weights"]), where
    for i, (g, w) in enumerate(zip(got["weights"], want["weights"])):
        np.testing.assert_allclose(np.array(g), np.array(w), atol=tol, err_msg=f"{where}: weight {i}")
    assert_close_logs(got["history"], want["history"], f"{where} history", tol)
    assert abs(got["lr"] - want["lr"]) <= TOLERANCE * want["lr"], where


def tree(root):
    """Relative paths under root; names made of a host, pid, time or hash made generic."""
    out = []
    for base, _, files in os.walk(root):
        for name in files:
            name = re.sub(r"^events\.out\.tfevents\..*", "events.out.tfevents", name)
            name = re.sub(r"^[0-9a-f]{32}$", "<chunks>", name)  # tensorstore's: how many varies
            out.append(os.path.relpath(os.path.join(base, name), root))
    return sorted(p for i, p in enumerate(out) if not p.endswith("<chunks>") or p not in out[:i])


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """The matrix cases and every experiment's smoke config, in one reference and one worker pair."""
    tmp = tmp_path_factory.mktemp("matrix")
    cases = MATRIX + SMOKE
    reference = _start(cases, tmp / "ref", tmp / "ref.json", strategy="one_device")
    workers = start_workers(cases, tmp / "mw", tmp)
    errors = finish([reference, *workers], timeout=1800)  # 17 cases; a hang guard
    check_ok([reference, *workers], errors)
    return tmp, load(tmp / "ref.json"), [load(tmp / f"w{i}.json") for i in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("case", MATRIX)
def test_two_workers_equal_one_process(matrix, case):
    tmp, reference, workers = matrix
    tol = FLOAT16_TOLERANCE.get(case, TOLERANCE)
    for index, results in enumerate(workers):
        assert_same_run(results[case], reference[case], f"{case} on worker {index}", tol)
    assert_close_logs(records(tmp / "mw" / case), records(tmp / "ref" / case), f"{case} metrics.jsonl", tol)
    assert tree(tmp / "mw" / case) == tree(tmp / "ref" / case)  # the chief's files, and nothing else


@pytest.mark.slow
def test_the_matrix_cases_exercise_what_they_name(matrix):
    """Guards against a case that silently stopped testing its feature."""
    _, reference, _ = matrix
    last = {case: reference[case]["history"][-1] for case in MATRIX}
    assert {"recall_at_k/1", "recall_at_k/3", "accuracy"} <= set(last["metrics"])
    assert {"f1", "f1_each/0", "accuracy"} <= set(last["f1"])
    assert {"cls/accuracy", "aux/top2", "val/aux/top2", "val/loss"} <= set(last["heads"])
    assert last["nan_skip"]["nonfinite_steps"] == 2  # one poisoned batch per epoch
    assert last["mixed_overflow"]["loss_scale"] < 32768  # the overflow halved the scale
    callbacks = reference["callbacks"]
    assert 1 < len(callbacks["history"]) < 12  # EarlyStopping stopped it ...
    assert callbacks["lr"] < 0.01 / 2  # ... after ReduceLROnPlateau had lowered the rate
    assert reference["nan_restore"]["step"] == reference["metrics"]["step"]
    term, step = reference["contrastive"], reference["contrastive_step"]
    assert term["history"][-1]["loss"] < term["history"][0]["loss"] and "val/loss" in term["history"][-1]
    for a, b in zip(term["weights"], step["weights"]):  # NTXent = a hand-written step around all_gather
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6)


@pytest.mark.slow
def test_keep_best_and_mid_epoch_checkpoints_are_the_reference_ones(matrix):
    tmp, _, _ = matrix

    def kept(root):
        directory = root / "eval_best_midepoch" / "checkpoints"
        return sorted(int(n) for n in os.listdir(directory) if n.isdigit())

    assert kept(tmp / "mw") == kept(tmp / "ref")
    assert kept(tmp / "ref") == [5, 15]  # the latest, and the "best" (best_mode="min": the lowest)


@pytest.mark.slow
def test_every_experiment_smoke_config_trains_on_two_workers(matrix):
    _, want, got = matrix
    for case in SMOKE:
        for index in range(2):
            assert got[index][case]["step"] == want[case]["step"], (case, index)
            assert got[index][case]["history"], (case, index)
        # Dropout draws per replica, so only the workers' weights are compared: they stay in sync.
        for a, b in zip(got[0][case]["weights"], got[1][case]["weights"]):
            np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=case)


@pytest.mark.slow
def test_each_worker_draws_its_own_dropout_masks_and_noise(tmp_path):
    """Oracle for worker 0 (global replica 0): Keras' Dropout and keras.random.normal with the
    same seeds on one worker's rows, outside the framework; for worker 1: independence."""
    import keras  # the worker processes' own import is what is tested; here only the oracle

    workers = start_workers(["random_draws"], tmp_path / "mw", tmp_path)
    check_ok(workers, finish(workers))
    got = [load(tmp_path / f"w{i}.json")["random_draws"] for i in range(2)]
    masks = [np.array(g["draws"]["mask"]) > 0 for g in got]
    noise = [np.array(g["draws"]["noise"]) for g in got]
    dropout, generator = keras.layers.Dropout(0.3, seed=5), keras.random.SeedGenerator(11)
    for _ in range(got[0]["step"]):  # one draw of each per step
        want_mask = np.array(dropout(np.ones(masks[0].shape, "float32"), training=True)) > 0
        want_noise = np.array(keras.random.normal(noise[0].shape, seed=generator))
    np.testing.assert_array_equal(masks[0], want_mask)
    np.testing.assert_array_equal(noise[0], want_noise)
    assert abs(masks[1].mean() - 0.7) < 0.04
    assert abs(np.mean(masks[0] == masks[1]) - 0.58) < 0.04  # independent masks; the same mask: 1.0
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.1  # the same noise: 1.0
    for a, b in zip(got[0]["weights"], got[1]["weights"]):  # the workers' replicas stay in sync
        np.testing.assert_array_equal(np.array(a), np.array(b))


# ---- faults ---------------------------------------------------------------------------------

SLOW_STEPS = ("--step_seconds=0.15", f"--peer_timeout_secs={round(seconds(10))}")


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    """The one-process run of `long`, started now and waited for on first use: it trains while
    the first fault test's workers start and sleep through their slow steps."""
    tmp = tmp_path_factory.mktemp("long")
    reference = _start(["long"], tmp / "ref", tmp / "ref.json", strategy="one_device")
    result = {}

    def wait():
        if not result:
            check_ok([reference], finish([reference]))
            result.update(load(tmp / "ref.json")["long"])
        return result

    yield wait
    if reference.poll() is None:  # a test failed before waiting for it
        finish([reference], timeout=1)


def _wait_for(condition, what, processes, timeout=600):
    deadline = time.monotonic() + seconds(timeout)
    while time.monotonic() < deadline:
        if condition():
            return
        for p in processes:
            assert p.poll() is None, p.communicate()[1][-4000:]
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {seconds(timeout):.0f}s")


def _has_checkpoint(workdir):
    directory = workdir / "checkpoints"
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def _logged_step(workdir, step=4):
    """Whether the chief has logged training at `step` or later: unlike a checkpoint directory, which
    appears when orbax's background write ends, this follows the training loop."""
    path = workdir / "metrics.jsonl"
    if not os.path.exists(path):
        return False
    with open(path) as f:
        lines = [line for line in f if line.endswith("\n")]
    return any(r["kind"] == "train" and r["step"] >= step for r in map(json.loads, lines))


@contextlib.contextmanager
def _one_worker_signalled(tmp_path, signum, ready):
    """Two slow-stepping workers on `long`; yields them and the time worker 1 got `signum`, sent
    once `ready(workdir)` holds. Whatever still runs on exit is killed."""
    workers = start_workers(["long"], tmp_path / "mw", tmp_path, extra=SLOW_STEPS)
    workdir = tmp_path / "mw" / "long"
    try:
        _wait_for(lambda: ready(workdir), ready.__name__, workers)
        workers[1].send_signal(signum)
        yield workers, time.monotonic()
    finally:
        finish(workers, timeout=1)


def _resume_and_compare(tmp_path, long_reference):
    workers = start_workers(["long"], tmp_path / "mw", tmp_path, tag="_rerun")
    check_ok(workers, finish(workers))
    reference = long_reference()
    for index in range(2):
        got = load(tmp_path / f"w{index}_rerun.json")["long"]
        assert got["step"] == reference["step"]
        for i, (g, w) in enumerate(zip(got["weights"], reference["weights"])):
            np.testing.assert_allclose(np.array(g), np.array(w), atol=TOLERANCE, err_msg=f"weight {i}")


@pytest.mark.slow
def test_a_killed_worker_ends_the_others_in_bounded_time_and_a_rerun_resumes(tmp_path, long_reference):
    with _one_worker_signalled(tmp_path, signal.SIGKILL, _has_checkpoint) as (workers, killed_at):
        # Bounded: the peer timeout ends it; a hang fails here, naming the wait.
        _, err = workers[0].communicate(timeout=seconds(300))
        survived = time.monotonic() - killed_at
    assert workers[0].returncode != 0
    assert "/job:worker/replica:0/task:1" in err, err[-3000:]
    print(f"surviving worker exited {survived:.1f}s after its peer was killed")
    _resume_and_compare(tmp_path, long_reference)


@pytest.mark.slow
def test_sigterm_to_one_worker_saves_once_at_an_agreed_step_and_a_rerun_resumes(tmp_path, long_reference):
    with _one_worker_signalled(tmp_path, signal.SIGTERM, _logged_step) as (workers, signalled_at):
        errors = [w.communicate(timeout=seconds(300))[1] for w in workers]
        took = time.monotonic() - signalled_at
    check_ok(workers, errors)
    steps = [re.findall(r"Preempted: saved step (\d+)", err) for err in errors]
    assert steps[0] and steps[0] == steps[1], (steps, [err[-3000:] for err in errors])
    saved = sorted(int(n) for n in os.listdir(tmp_path / "mw" / "long" / "checkpoints") if n.isdigit())
    assert int(steps[0][0]) == saved[-1]
    assert not os.path.exists(tmp_path / "w0.json")  # preempted before the case finished
    print(f"both workers saved step {steps[0][0]} and exited 0, {took:.1f}s after SIGTERM")
    _resume_and_compare(tmp_path, long_reference)


# ---- uneven inputs ----------------------------------------------------------------------------


def _two_workers(args, *, stdout=subprocess.PIPE):
    """`args` (a command; `{i}` in it is the worker's index) run as workers 0 and 1 of a new cluster."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [
        subprocess.Popen(
            [arg.format(i=i) for arg in args],
            cwd=ROOT,
            env=_env({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]


def _run_uneven(tmp_path, mode):
    script = os.path.join(ROOT, "tests", "uneven_workers.py")
    workers = _two_workers(
        [
            sys.executable,
            script,
            f"--mode={mode}",
            f"--workdir={tmp_path / mode}",
            f"--out={tmp_path}/{mode}{{i}}.json",
        ]
    )
    return workers, finish(workers, timeout=300)


@pytest.mark.slow
def test_uneven_evaluation_batches_evaluate_every_example_once_and_uneven_training_is_refused(tmp_path):
    """Worker 0 has 5 evaluation batches and worker 1 has 3 (it runs two steps on batches of no rows):
    the logged and returned values are Keras' over all 64 examples. Uneven training data would make
    one worker wait for the other's missing steps: both say so before training."""
    workers, errors = _run_uneven(tmp_path, "eval")
    check_ok(workers, errors)
    for i in range(2):
        got = load(tmp_path / f"eval{i}.json")
        want = got["keras"]
        for values in (got["history"][-1], {f"val/{k}": v for k, v in got["evaluate"].items()}):
            assert values["val/accuracy"] == pytest.approx(want["accuracy"], abs=1e-7)
            assert values["val/loss"] == pytest.approx(want["loss"], abs=1e-6)
    assert "uneven steps (worker 0: 5, worker 1: 3); all run 5" in errors[0]

    workers, errors = _run_uneven(tmp_path, "train")
    for p, err in zip(workers, errors):
        assert p.returncode != 0
        assert "different numbers of steps per pass (worker 0: 6, worker 1: 4)" in err, err[-3000:]
        assert "set config.steps_per_epoch" in err
    assert not os.path.exists(tmp_path / "train" / "checkpoints")


@pytest.mark.slow
def test_uneven_workers_with_steps_per_epoch_each_read_on_through_their_own_data(tmp_path):
    """Worker 0 has 6 training batches and worker 1 has 2; steps_per_epoch=2 for 3 epochs: each
    worker reads on and starts its next pass where its own data runs out. Worker 1's pass is an
    epoch, but it cycles its input as worker 0 must, so that both run the same compiled calls.
    Reference: Keras' fit (SGD, one device) on the global batches that makes
    (tests/uneven_workers.py)."""
    workers, errors = _run_uneven(tmp_path, "read_on")
    check_ok(workers, errors)
    for i in range(2):
        got = load(tmp_path / f"read_on{i}.json")
        assert len(got["history"]) == 3
        assert got["max_abs_diff"] <= 1e-6, (i, got["max_abs_diff"])
    for i, steps in enumerate((6, 2)):
        assert f"steps_per_epoch=2 and build_train_dataset() yields {steps} steps per pass" in errors[i]


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
        return _two_workers(
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
        _wait_for(lambda: _logged_step(tmp_path / "broken", 15), "train record at step 15", broken)
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
