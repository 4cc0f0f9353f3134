"""Run a repository script (an experiment, scripts/*.py) in a subprocess as a user would, from the repository root."""

import os
import subprocess
import sys

from timeouts import seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *args, env=None, timeout=900):
    full_env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        capture_output=True,
        text=True,
        timeout=seconds(timeout),
        cwd=ROOT,
        env=full_env,
    )
