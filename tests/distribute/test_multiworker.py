"""Two real worker processes on 127.0.0.1 against one process on the same global batches.

Each case of tests/multiworker_cases.py trains under MultiWorkerMirroredStrategy
in two worker processes and under OneDeviceStrategy in a reference process;
the workers share their processes across cases. Both workers must end on the
reference's weights, log its values, take its steps. The workers also draw
their own random numbers (`random_draws`). Faults, uneven inputs and a real
experiment on two workers: tests/distribute/test_multiworker_faults.py.
Everything here is marked slow (three TensorFlow processes running 19-20 cases:
minutes); CI runs it, `-m "not slow"` skips it. A research script started
through the launcher on two workers, with a metric and checkpoints, is in tests/distribute/test_distribute.py.
"""

import os
import re

import numpy as np
import pytest
from workers import check_ok, finish, load, records, start, start_workers

MATRIX = (
    "metrics", "f1", "heads", "eval_best_midepoch", "ema_accum", "mixed_overflow", "nan_skip", "nan_restore",
    "callbacks", "gan",
)  # fmt: skip
MATRIX += (
    "contrastive",
    "contrastive_step",
)  # NT-Xent over the global batch; tests/losses/test_contrastive.py
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
    """The matrix cases and every experiment's smoke config (at most two epochs, on less data:
    tests/multiworker_cases.py), in one reference and one worker pair; the workers also run
    `random_draws`."""
    tmp = tmp_path_factory.mktemp("matrix")
    cases = MATRIX + SMOKE
    reference = start(cases, tmp / "ref", tmp / "ref.json", strategy="one_device")
    workers = start_workers((*cases, "random_draws"), tmp / "mw", tmp)  # its oracle is not a process
    errors = finish([reference, *workers], timeout=2700)  # 20 cases on the workers; a hang guard
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
def test_each_worker_draws_its_own_dropout_masks_and_noise(matrix):
    """Oracle for worker 0 (global replica 0): Keras' Dropout and keras.random.normal with the
    same seeds on one worker's rows, outside the framework; for worker 1: independence."""
    import keras  # the worker processes' own import is what is tested; here only the oracle

    got = [results["random_draws"] for results in matrix[2]]
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
