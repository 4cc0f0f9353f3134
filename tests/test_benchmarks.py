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
    table = _run("bench.py", "--quick", "--markdown", "--json", str(out))
    results = json.loads(out.read_text())["mlp"]
    rows = {k: v for k, v in results.items() if not k.startswith("_")}
    assert set(rows) == {"fit_default", "fit_trimmed", "bare_32", "bare_chunk", "keras_spe32"}
    # The work check: every contender ran the same steps to the same loss as the fastest bare loop.
    steps = {r["optimizer_steps"] for r in rows.values()}
    assert len(steps) == 1 and steps.pop() > 0
    assert all(r["work_ok"] for r in rows.values()), {k: r["final_loss"] for k, r in rows.items()}
    assert rows[results["_fastest_bare"]]["cpu_ratio_to_bare"] == 1.0
    assert rows["fit_default"]["traces"] == rows["fit_trimmed"]["traces"] == 1  # once over all chunks
    assert set(results["_targets"]) == {"fit_default/bare", "fit_default/best_keras"}
    assert all(v > 0 for v in results["_targets"].values())
    assert "| fit_default |" in table and "work check" in table


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
