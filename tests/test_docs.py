"""The README's complete script and its command lines, run as a reader would run them.

The Python blocks of README.md and docs/ run in-process through Sybil (the
repository's conftest.py); here the README's `quick.py` block is saved to a file
and started from the command line, and what the README says it prints is checked
against what it prints.
"""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _readme() -> str:
    with open(README) as f:
        return f.read()


def _block(marker: str, directory, name: str) -> str:
    """Saves the README block under `<!-- marker ... -->` as `directory/name`; returns its path."""
    match = re.search(rf"<!-- {marker}[^>]*-->\n```python\n(.*?)```", _readme(), re.S)
    assert match, f"README.md lost its {marker} block (the <!-- {marker} ... --> line above it)"
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(match.group(1))
    return path


def _quick_script(directory) -> str:
    return _block("quick.py", directory, "quick.py")


def _run(script, *args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, str(cwd)]), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


@pytest.mark.slow
def test_the_readme_script_trains_on_two_replicas_and_its_after_training_block_reads_the_run(tmp_path):
    script = _quick_script(tmp_path)
    workdir = tmp_path / "runs" / "quick"
    result = _run(
        script,
        f"--workdir={workdir}",
        "--config.epochs=1",
        "--config.model.hidden=64",
        "--config.distribution.cpu_devices=2",
        "--config.distribution.strategy=mirrored",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "metrics.jsonl") as f:
        epochs = [r for r in map(json.loads, f) if r["kind"] == "epoch"]
    said = ("loss", "loss/ce", "loss/l2", "accuracy", "val/loss", "val/accuracy")
    assert all(key in epochs[-1] for key in said), sorted(epochs[-1])
    assert epochs[-1]["val/accuracy"] > 0.5  # one epoch of an MLP on digits
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["hidden"] == 64 and config["distribution"]["strategy"] == "mirrored"
    assert (workdir / "checkpoints").is_dir()

    after = _run(_block("after-training", tmp_path, "after.py"), cwd=tmp_path)
    assert after.returncode == 0, after.stderr[-3000:]
    printed = after.stdout.strip().splitlines()
    restored = eval(printed[0])  # noqa: S307 - the dict the block printed: evaluate() of the restored run
    # The oracle is what the training run logged at its last evaluation (on 2 replicas; this is 1).
    assert abs(restored["loss"] - epochs[-1]["val/loss"]) < 1e-5
    assert abs(restored["accuracy"] - epochs[-1]["val/accuracy"]) < 1e-6
    assert os.path.exists(os.path.join(tmp_path, printed[-1], "saved_model.pb"))


def test_a_misspelt_key_prints_what_the_readme_shows(tmp_path):
    script = _quick_script(tmp_path)
    shown = re.search(r"^\$ python quick.py (.*)\n(FATAL .*)$", _readme(), re.M)
    assert shown, "README.md lost its misspelt-key example"
    result = _run(script, *shown.group(1).split(), cwd=tmp_path)
    assert result.returncode != 0
    assert shown.group(2) in result.stderr, result.stderr[-2000:]
