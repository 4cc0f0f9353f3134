"""Weights do not depend on how steps are grouped into compiled calls (config.deterministic).

The case: a WGAN-GP step (3 critic updates per generator update, a gradient
penalty through a nested GradientTape, BatchNorm in both models), where
Grappler's rewrites made a step inside the compiled loop compute in another
order than a step starting a call (docs/determinism.md). The oracle is an
independent run of one compiled call per step (steps_per_execution=1).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from wgan_gp import WganGpTrainer, get_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "wgan_gp.py")


def _weights(steps_per_execution):
    config = get_config()
    config.steps_per_execution = steps_per_execution
    trainer = WganGpTrainer(config)
    trainer.fit()
    return trainer.weights()


def _bitwise(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow  # three WGAN-GP runs, minutes of tracing on 2 busy cores
def test_wgan_gp_weights_are_bitwise_equal_across_groupings():
    one_call_per_step = _weights(1)  # the oracle
    assert _bitwise(_weights(4), one_call_per_step)
    assert _bitwise(_weights(0), one_call_per_step)  # auto


def _run(workdir, *flags):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(str(workdir) + ".log", "a")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, SCRIPT, f"--config={SCRIPT}", f"--workdir={workdir}",
         "--config.epochs=3", "--config.steps_per_execution=0", *flags],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip


def _saved_weights(workdir):
    with np.load(os.path.join(workdir, "weights.npz")) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_wgan_gp_preempted_with_auto_grouping_resumes_to_the_unbroken_runs_weights(tmp_path):
    unbroken, interrupted = tmp_path / "unbroken", tmp_path / "interrupted"
    reference = _run(unbroken, "--config.steps_per_execution=1")  # the oracle: one call per step
    first = _run(interrupted, "--config.task.sigterm_after_step=10")  # a real SIGTERM, mid-epoch
    assert first.wait(timeout=600) == 0
    steps = sorted(int(n) for n in os.listdir(interrupted / "checkpoints") if n.isdigit())
    assert steps and steps[-1] < 42, steps  # stopped before the end (3 epochs of 14 steps)
    assert _run(interrupted).wait(timeout=600) == 0
    assert reference.wait(timeout=600) == 0
    assert _bitwise(_saved_weights(interrupted), _saved_weights(unbroken))
