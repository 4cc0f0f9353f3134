"""Strategies: two real worker processes on 127.0.0.1, auto, TPU fail-fast, global batch layout."""

import json
import os
import subprocess
import sys

import multiworker_script
import numpy as np
import pytest
import tensorflow as tf
from timeouts import seconds

import framework
from framework import distribute

from toys import config, free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "multiworker_script.py")


def _run_workers(workdir, tmp_path, *flags, tag="", strategy="multi_worker"):
    """Two worker processes on 127.0.0.1 running the script; returns their (stdout, stderr)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    try:
        for index in range(2):
            env = {
                **os.environ,
                "PYTHONPATH": ROOT,
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            }
            args = [
                sys.executable, SCRIPT, f"--config={SCRIPT}", f"--workdir={workdir}", "--mode=train",
                f"--config.distribution.strategy={strategy}", f"--weights_out={tmp_path}/w{index}{tag}.npz",
                *flags,
            ]  # fmt: skip
            workers.append(
                subprocess.Popen(
                    args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        outputs = [w.communicate(timeout=seconds(900)) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.communicate()
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    return outputs


def _assert_workers_hold(tmp_path, expected, tag=""):
    for index in range(2):
        with np.load(tmp_path / f"w{index}{tag}.npz") as saved:
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        assert len(weights) == len(expected)
        for got, want in zip(weights, expected):
            np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_two_worker_processes_match_a_single_process_on_the_same_global_batches(tmp_path):
    workdir = tmp_path / "run"
    reference = multiworker_script.BlobsTrainer(multiworker_script.get_config())
    outputs = _run_workers(workdir, tmp_path)
    reference.fit()
    assert "Final metrics:" in outputs[0][0] and "Final metrics:" not in outputs[1][0]  # the chief reports
    assert "accuracy" in outputs[0][0]  # a metric, read by both workers at every log point and save
    _assert_workers_hold(tmp_path, reference.model.get_weights())

    # Only the chief wrote to the shared workdir: one record per log point, one config.json.
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [2, 4, 5, 6, 8, 10]  # every 2 steps and at the end of each 5-step epoch
    assert json.loads((workdir / "config.json").read_text())["distribution"]["strategy"] == "multi_worker"
    assert len(os.listdir(workdir / "train")) == 1  # one TensorBoard event file: the chief's

    # Rerun with one more epoch: both workers restore the chief's checkpoint and go on; "auto"
    # under a TF_CONFIG cluster is multi_worker.
    assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == [5, 10]
    outputs = _run_workers(workdir, tmp_path, "--config.epochs=3", tag="_resumed", strategy="auto")
    for index, (_, err) in enumerate(outputs):
        want = f"Distribution: MultiWorkerMirroredStrategy with 2 replica(s) on 2 workers; this is worker {index}"
        assert want in err, err[-3000:]
    assert "Final metrics:" not in outputs[1][0]
    longer = multiworker_script.get_config()
    longer.epochs = 3
    reference = multiworker_script.BlobsTrainer(longer)
    reference.fit()
    assert "steps: 15 (5 this run)" in outputs[0][0]
    _assert_workers_hold(tmp_path, reference.model.get_weights(), tag="_resumed")


def test_global_batches_are_the_same_on_any_layout():
    x = np.arange(40, dtype="float32").reshape(20, 2)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(20)))

    def global_steps(pipelines, replicas):
        per_pipeline = []
        for i in range(pipelines):
            context = tf.distribute.InputContext(pipelines, i, replicas)
            per_pipeline.append([b[1].numpy() for b in distribute.global_batches(dataset, context, 8)])
        local = replicas // pipelines
        steps = len(per_pipeline[0]) // local
        assert all(len(p) == steps * local for p in per_pipeline)
        return [
            np.concatenate([per_pipeline[p][s * local + r] for p in range(pipelines) for r in range(local)])
            for s in range(steps)
        ]

    single = global_steps(1, 1)
    assert [list(b) for b in single] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    for pipelines, replicas in [(1, 2), (2, 2), (2, 4), (4, 4)]:
        got = global_steps(pipelines, replicas)
        assert [list(b) for b in got] == [list(b) for b in single], (pipelines, replicas)


def test_tpu_without_a_tpu_fails_fast_and_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"strategy='tpu'.*no TPU.*Run on a TPU VM.*'one_device'"):
        framework.distribute.make_strategy(config(**{"distribution.strategy": "tpu"}).distribution)


def test_auto_without_accelerators_is_one_cpu_device_or_mirrored_logical_cpus():
    one = distribute.make_strategy(config(**{"distribution.strategy": "auto"}).distribution)
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    two = distribute.make_strategy(
        config(**{"distribution.strategy": "auto", "distribution.cpu_devices": 2}).distribution
    )
    assert isinstance(two, tf.distribute.MirroredStrategy) and two.num_replicas_in_sync == 2


def test_multi_worker_without_tf_config_names_it(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(RuntimeError, match="TF_CONFIG"):
        distribute.make_strategy(config(**{"distribution.strategy": "multi_worker"}).distribution)


def test_tf_config_counts_its_tasks_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.cluster_tasks() == 0
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"], "ps": ["d:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribute.cluster_tasks() == 3
    monkeypatch.setenv("TF_CONFIG", "{'cluster': }")
    with pytest.raises(RuntimeError, match="TF_CONFIG environment variable is not a JSON object"):
        distribute.make_strategy(config(**{"distribution.strategy": "auto"}).distribution)


def test_one_device_under_a_tf_config_cluster_trains_alone_and_says_so(monkeypatch, caplog):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    caplog.set_level("WARNING")
    strategy = distribute.make_strategy(config(**{"distribution.strategy": "one_device"}).distribution)
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert "cluster of 2 tasks, but config.distribution.strategy='one_device'" in caplog.text
