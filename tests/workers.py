"""Worker processes for the two-worker tests (tests/distribute/test_multiworker*.py): start, wait, read.

`start_workers` runs tests/multiworker_cases.py as workers 0 and 1 of a new
cluster on 127.0.0.1; `start` runs it as one process (the reference);
`two_workers` runs any command as a worker pair. Every wait is scaled by
TEST_TIMEOUT_SCALE (tests/timeouts.py).
"""

import json
import os
import subprocess
import sys
import time

from timeouts import seconds

from toys import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "multiworker_cases.py")


def worker_env(tf_config=None):
    """os.environ for a test process: the worktree on PYTHONPATH, quiet TF, `tf_config` as TF_CONFIG."""
    variables = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "JAX_PLATFORMS": "cpu",
    }
    variables.pop("TF_CONFIG", None)
    if tf_config:
        variables["TF_CONFIG"] = json.dumps(tf_config)
    return variables


def start(cases, root, out, *, strategy, tf_config=None, extra=()):
    """tests/multiworker_cases.py running `cases` under `strategy`; its results go to `out`."""
    args = [
        sys.executable, SCRIPT, f"--strategy={strategy}", f"--root={root}", f"--cases={','.join(cases)}",
        f"--out={out}", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=worker_env(tf_config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_workers(cases, root, tmp, *, tag="", extra=()):
    """Two worker processes on loopback; each writes its results to tmp/w<index><tag>.json."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [
        start(
            cases,
            root,
            tmp / f"w{i}{tag}.json",
            strategy="multi_worker",
            extra=extra,
            tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}},
        )  # fmt: skip
        for i in range(2)
    ]


def finish(processes, timeout=900):
    """Waits for every process; returns their stderr. Kills them all if one hangs."""
    outputs = []
    try:
        for p in processes:
            outputs.append(p.communicate(timeout=seconds(timeout))[1])
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outputs


def check_ok(processes, errors):
    for p, err in zip(processes, errors):
        assert p.returncode == 0, err[-4000:]


def load(path):
    with open(path) as f:
        return json.load(f)


def records(workdir):
    """metrics.jsonl without wall-clock values."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in ("time", "steps_per_sec")} for r in rows]


def two_workers(args, *, stdout=subprocess.PIPE):
    """`args` (a command; `{i}` in it is the worker's index) run as workers 0 and 1 of a new cluster."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [
        subprocess.Popen(
            [arg.format(i=i) for arg in args],
            cwd=ROOT,
            env=worker_env({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]


def wait_for(condition, what, processes, timeout=600):
    deadline = time.monotonic() + seconds(timeout)
    while time.monotonic() < deadline:
        if condition():
            return
        for p in processes:
            assert p.poll() is None, p.communicate()[1][-4000:]
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {seconds(timeout):.0f}s")


def logged_step(workdir, step=4):
    """Whether the chief has logged training at `step` or later: unlike a checkpoint directory, which
    appears when orbax's background write ends, this follows the training loop."""
    path = workdir / "metrics.jsonl"
    if not os.path.exists(path):
        return False
    with open(path) as f:
        lines = [line for line in f if line.endswith("\n")]
    return any(r["kind"] == "train" and r["step"] >= step for r in map(json.loads, lines))
