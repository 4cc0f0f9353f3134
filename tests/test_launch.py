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


def test_summaries_are_readable_by_tensorboard_and_the_plot_script_renders(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    workdir = tmp_path / "digits"
    result = run_script(
        "experiments/digits.py", "--config=configs/digits.py:smoke", f"--workdir={workdir}",
        "--config.log_every_steps=5", "--config.checkpoint.best_metric=val/accuracy",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Run summary" in result.stdout and "best checkpoint: step" in result.stdout
    tags = {}
    for split in ("train", "eval"):
        acc = event_accumulator.EventAccumulator(str(workdir / split), size_guidance={"tensors": 0})
        acc.Reload()
        tags[split] = set(acc.Tags()["tensors"])
    assert {"loss", "loss/ce", "loss/l2", "accuracy", "steps_per_sec"} <= tags["train"]
    assert {"loss", "loss/ce", "accuracy"} <= tags["eval"]
    acc = event_accumulator.EventAccumulator(str(workdir / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    steps = [e.step for e in acc.Tensors("loss")]
    assert steps[:3] == [5, 10, 15]

    png = tmp_path / "plot.png"
    plotted = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "plot_run.py"), str(workdir), str(workdir), "--out", str(png)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
