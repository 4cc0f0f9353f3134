"""The absl launcher end to end: the default experiment's smoke config in a subprocess.

The digits runs are workload smokes (slow tier); the one-file script and the misspelt key are quick.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from script_runs import ROOT, run_script
from timeouts import seconds


@pytest.fixture(scope="module")
def digits_smoke(tmp_path_factory):
    """The default experiment's smoke config as a user runs it on a terminal, logging every 5 steps
    and keeping the best checkpoint by val/accuracy; one run read by the tests below.
    Returns (workdir, returncode, the lines the terminal showed)."""
    workdir = tmp_path_factory.mktemp("launch") / "digits"
    returncode, lines = run_on_a_terminal(
        "experiments/digits.py", "--config=configs/digits.py:smoke", f"--workdir={workdir}",
        "--config.log_every_steps=5", "--config.checkpoint.best_metric=val/accuracy",
    )  # fmt: skip
    return workdir, returncode, lines


@pytest.mark.slow
def test_digits_smoke_trains_evaluates_and_prints_final_metrics(digits_smoke):
    workdir, returncode, lines = digits_smoke
    assert returncode == 0, "\n".join(lines)[-3000:]
    assert "Final metrics:" in "\n".join(lines), lines
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    final = [r for r in records if r["kind"] == "epoch"][-1]
    assert final["epoch"] == 3
    assert final["val/accuracy"] >= 0.85  # 3 epochs; the full config reaches >= 0.95
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 3


@pytest.mark.slow
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


@pytest.mark.slow
def test_summaries_are_readable_by_tensorboard_and_the_plot_script_renders(digits_smoke, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    workdir, returncode, lines = digits_smoke
    shown = "\n".join(lines)
    assert returncode == 0, shown[-3000:]
    assert "Run summary" in shown and "best checkpoint: step" in shown
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
        capture_output=True, text=True, timeout=seconds(600),
    )  # fmt: skip
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


LIBRARY_INTERNALS = ("orbax", "[process=0]", "checkpoint_manager", "async_save", "Renaming ")


def run_on_a_terminal(script, *args, timeout=900):
    """Runs `script` with stdout and stderr on a pseudo-terminal; returns (returncode, lines shown)."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, script), *args],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, cwd=ROOT, env=env,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    returncode = proc.wait(timeout=seconds(timeout))
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return returncode, [line.split("\r")[-1] for line in text.split("\n") if line.strip()]


@pytest.mark.slow
def test_a_terminal_shows_progress_epochs_and_checkpoints_and_eval_reuses_the_runs_settings(
    digits_smoke, tmp_path
):
    trained, returncode, lines = digits_smoke
    shown = "\n".join(lines)
    assert returncode == 0, shown[-3000:]
    assert not [line for line in lines if any(word in line for word in LIBRARY_INTERNALS)], shown
    assert sum("done in" in line for line in lines) == 3  # one line per epoch ...
    assert sum("Checkpoint at step" in line for line in lines) == 3  # ... and per checkpoint
    assert sum(line.startswith("Epoch ") for line in lines) == 3  # the progress bar's header
    # Before the summary, past TensorFlow's C++ start-up (its count varies): the strategy, then
    # 3 x (header, bar, epoch, checkpoint). Library internals made it ~100 lines.
    run = lines[: next(i for i, line in enumerate(lines) if line.startswith("Run summary"))]
    ours = [
        line
        for line in run
        if not re.match(r"(WARNING: All log messages before absl|[IWE]0000 00:00:)", line)
    ]
    assert len(ours) <= 1 + 3 * 4, shown

    # The same command in eval mode, no override: the run's best metric comes from its config.json.
    # On a copy of the run, which the other tests read as it was trained.
    workdir = tmp_path / "digits"
    shutil.copytree(trained, workdir)
    result = run_script(
        "experiments/digits.py", "--config=configs/digits.py:smoke", f"--workdir={workdir}",
        "--mode=eval", "--checkpoint=best",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(word in result.stderr for word in LIBRARY_INTERNALS), result.stderr
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    trained = {r["step"]: r["val/accuracy"] for r in records if r["kind"] == "eval" and r["step"] != 0}
    best_step = max(trained, key=lambda s: (trained[s], s))
    evaluated = records[-1]
    assert evaluated["kind"] == "eval" and evaluated["step"] in trained
    assert trained[evaluated["step"]] == trained[best_step]
    assert abs(evaluated["val/accuracy"] - trained[best_step]) < 1e-9


ONE_FILE_SCRIPT = """
import sys

import pytest

import keras
import numpy as np
import tensorflow as tf

import framework
from framework import losses


def get_config():
    config = framework.config.defaults()
    config.epochs = 2
    config.batch_size = 32
    config.model.hidden = 16
    return config


class Blobs(framework.Trainer):
    def build_model(self):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(self.config.model.hidden, activation="relu"),
                                 keras.layers.Dense(3)])

    def build_loss(self):
        return losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")

    def build_train_dataset(self, input_context):
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 200).astype("int32")
        x = (rng.normal(0, 1, (200, 4)) + y[:, None]).astype("float32")
        batch = input_context.get_per_replica_batch_size(self.config.batch_size)
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


if __name__ == "__main__":
    if sys.argv[1] == "plain":
        history = Blobs(get_config(), workdir=sys.argv[2]).fit()
        print("epochs:", len(history), "final loss:", history[-1]["loss"])
    else:
        framework.run(Blobs)
"""


def test_a_one_file_script_runs_with_its_own_config_from_absl_and_from_plain_python(tmp_path):
    script = tmp_path / "blobs.py"
    script.write_text(ONE_FILE_SCRIPT)
    result = run_script(str(script), f"--workdir={tmp_path / 'run'}", "--config.epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["epochs"] == 3 and recorded["model"]["hidden"] == 16
    assert "Final metrics:" in result.stdout
    assert sum("done in" in line for line in result.stderr.splitlines()) == 3
    assert not any(word in result.stderr for word in LIBRARY_INTERNALS), result.stderr

    # Plain Python, output not a terminal (a scheduler's log): progress shows, library internals do not.
    result = run_script(str(script), "plain", str(tmp_path / "plain"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epochs: 2" in result.stdout
    lines = result.stderr.splitlines()
    assert sum("done in" in line for line in lines) == 2
    # The end's save; epoch saves wait checkpoint.min_interval_secs (60 s) after the start.
    assert sum("Checkpoint at step" in line for line in lines) == 1
    assert sum("epoch 2/2 step" in line for line in lines) >= 1  # the progress lines
    assert not any(word in result.stderr for word in LIBRARY_INTERNALS), result.stderr


def test_a_misspelt_key_over_the_scripts_own_config_fails_before_any_work(capsys):
    import framework
    from framework.launch import entry_point as launch

    def get_config():
        config = framework.config.defaults()
        config.model.hidden = 16
        return config

    def never_built(*args, **kwargs):
        raise AssertionError("the trainer was built")

    with pytest.raises(SystemExit) as exit_info:
        launch.run(
            never_built, ["blobs.py", "--workdir=/tmp/x", "--config.model.hiden=8"], get_config=get_config
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "FATAL --config.model.hiden: config.model has no key 'hiden'. Did you mean 'hidden'?" in err
