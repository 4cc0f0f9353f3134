"""A/B of training-loop contestants from different checkouts, interleaved epoch by epoch.

    ROUNDS=31 python scripts/bench_ab.py NEW:bare OLD:fit_default NEW:fit_default

Each argument is `checkout_root:contestant` (a `scripts/bench.py` contestant); every
one runs `scripts/bench.py --worker` of its own checkout in its own process. The
processes take one epoch each in turn (order reversed every round), so a slow phase of
a shared machine hits all of them. Printed: median CPU time per epoch and the medians
of per-round CPU and wall ratios to the first argument. Environment: ROUNDS (31),
WARM (3 warm-up epochs), SCEN (mlp/64).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys


def _spawn(spec: str, model: str, batch: str) -> subprocess.Popen:
    root, contestant = spec.rsplit(":", 1)
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, os.path.join(root, "scripts", "bench.py"), "--worker", contestant, model, batch]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)  # fmt: skip
    json.loads(proc.stdout.readline())  # ready
    return proc


def _epoch(proc: subprocess.Popen) -> dict:
    proc.stdin.write("epoch\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main() -> None:
    specs = sys.argv[1:]
    rounds, warm = int(os.environ.get("ROUNDS", "31")), int(os.environ.get("WARM", "3"))
    model, batch = os.environ.get("SCEN", "mlp/64").split("/")
    procs = {spec: _spawn(spec, model, batch) for spec in specs}
    cpu = {spec: [] for spec in specs}
    wall = {spec: [] for spec in specs}
    try:
        for r in range(warm + rounds):
            results = {spec: _epoch(procs[spec]) for spec in (specs if r % 2 == 0 else specs[::-1])}
            if r >= warm:
                for spec in specs:
                    cpu[spec].append(results[spec]["cpu"])
                    wall[spec].append(results[spec]["wall"])
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    ref = specs[0]
    for spec in specs:
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu[ref], cpu[spec]))
        wall_ratio = statistics.median(a / b for a, b in zip(wall[ref], wall[spec]))
        print(f"{spec:60s} CPU/epoch {statistics.median(cpu[spec]) * 1e3:7.1f} ms  "
              f"x first: CPU {cpu_ratio:.3f} wall {wall_ratio:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
