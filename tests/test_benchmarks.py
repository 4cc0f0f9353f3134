"""The benchmark scripts run end to end in their quick modes (no timing assertions)."""

import json
import os
import subprocess
import sys

import pytest
from timeouts import seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, timeout=900):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", script), *args],
        capture_output=True, text=True, timeout=seconds(timeout), cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_training_loop_benchmark_quick(tmp_path):
    out = tmp_path / "bench.json"
    _run("bench.py", "--quick", "--json", str(out))
    results = json.loads(out.read_text())["mlp/batch64"]
    assert set(results) == {"fit_default", "bare", "keras_spe32"}
    assert results["bare"]["cpu_ratio_to_bare"] == 1.0
    assert results["fit_default"]["traces"] == 1  # one trace over all the epochs
    assert all(r["steps_per_cpu_s"] > 0 for r in results.values())


@pytest.mark.slow
def test_step_and_checkpoint_benchmarks_quick():
    steps = _run("bench_steps.py", "--quick", "--markdown")
    for kind in ("eager", "tf.function", "xla", "mixed_float16", "float16 layers"):
        assert f"| {kind} |" in steps
    ckpt = _run("bench_checkpoint.py", "--quick")
    assert "save blocks (s)" in ckpt and "replay (s)" in ckpt


@pytest.mark.slow
def test_resume_benchmark_quick():
    table = _run("bench_resume.py", "--quick")
    for pipeline in ("array", "array/global_shuffle", "tfrecord", "tfrecord/shuffled_records"):
        for method in ("restore", "replay"):
            assert f"| {pipeline} | {method} |" in table
