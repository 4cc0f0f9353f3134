"""Weights do not depend on how steps are grouped into compiled calls (config.deterministic).

The case: a WGAN-GP step (3 critic updates per generator update, a gradient
penalty through a nested GradientTape, BatchNorm in both models), where
Grappler's rewrites made a step inside the compiled loop compute in another
order than a step starting a call (docs/determinism.md). The oracle is an
independent run of one compiled call per step (steps_per_execution=1), in this
process, 3 epochs: the in-process runs and the preempted subprocesses compare with it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from wgan_gp import WganGpTrainer, get_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "wgan_gp.py")


EPOCHS = 3
STEPS_PER_EPOCH = 14


def _weights(steps_per_execution):
    config = get_config()
    config.epochs = EPOCHS
    config.steps_per_execution = steps_per_execution
    trainer = WganGpTrainer(config)
    trainer.fit()
    return trainer.weights()


def _bitwise(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def one_call_per_step():
    """The oracle: one compiled call per step."""
    return _weights(1)


@pytest.mark.slow  # three WGAN-GP runs, minutes of tracing on 2 busy cores
def test_wgan_gp_weights_are_bitwise_equal_across_groupings(one_call_per_step):
    assert _bitwise(_weights(4), one_call_per_step)
    assert _bitwise(_weights(0), one_call_per_step)  # auto


def _run(workdir, *flags):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(str(workdir) + ".log", "a")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, SCRIPT, f"--config={SCRIPT}", f"--workdir={workdir}",
         f"--config.epochs={EPOCHS}", "--config.steps_per_execution=0", *flags],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip


def _saved_weights(workdir):
    with np.load(os.path.join(workdir, "weights.npz")) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_wgan_gp_preempted_with_auto_grouping_resumes_to_the_unbroken_runs_weights(
    tmp_path, one_call_per_step
):
    interrupted = tmp_path / "interrupted"
    # A real SIGTERM after the call ending at step 7 (calls stop at log_every_steps=7): mid-epoch.
    first = _run(interrupted, "--config.task.sigterm_after_step=5")
    assert first.wait(timeout=600) == 0
    steps = sorted(int(n) for n in os.listdir(interrupted / "checkpoints") if n.isdigit())
    assert steps and steps[-1] < EPOCHS * STEPS_PER_EPOCH, steps  # stopped before the end
    assert steps[-1] % STEPS_PER_EPOCH, steps  # ... and mid-epoch
    assert _run(interrupted).wait(timeout=600) == 0
    assert _bitwise(_saved_weights(interrupted), one_call_per_step)
