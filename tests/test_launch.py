"""The absl launcher end to end: the default experiment's smoke config in a subprocess."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *args, env=None, timeout=300):
    full_env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=full_env,
    )


def test_digits_smoke_trains_evaluates_and_prints_final_metrics(tmp_path):
    workdir = tmp_path / "digits"
    result = run_script("experiments/digits.py", "--config=configs/digits.py:smoke", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Final metrics:" in result.stdout
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    final = [r for r in records if r["kind"] == "epoch"][-1]
    assert final["epoch"] == 3
    assert final["val/accuracy"] >= 0.85  # 3 epochs; the full config reaches >= 0.95
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 3


def test_train_mode_skips_evaluation(tmp_path):
    workdir = tmp_path / "digits"
    result = run_script(
        "experiments/digits.py",
        "--config=configs/digits.py:smoke",
        f"--workdir={workdir}",
        "--mode=train",
        "--config.epochs=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert not any(k.startswith("val/") for r in records for k in r)
