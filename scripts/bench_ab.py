"""A/B of training-loop contenders from different checkouts or settings, interleaved chunk by chunk.

    ROUNDS=21 python scripts/bench_ab.py NEW:bare_chunk OLD:fit_default NEW:fit_default
    python scripts/bench_ab.py .:bare_chunk .:fit_default '.:fit_default:{"checkpoint.every_epochs": 0}'

Each argument is `checkout_root:contender[:json]` (a `scripts/bench.py` contender; the
optional JSON sets config keys of a Trainer.fit contender); every one runs
`scripts/bench.py --worker` of its own checkout in its own process, on the same
protocol as bench.py (one user-level call per chunk). The processes take one chunk
each in turn (order reversed every round). Printed: median CPU time per chunk and
the medians of per-round CPU and wall ratios to the first argument. Environment:
ROUNDS (21), WARM (2 warm-up chunks), WORKLOAD (mlp).
"""

from __future__ import annotations

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import request, spawn  # noqa: E402


def _spawn(spec: str, workload: str):
    root, contender, *overrides = spec.split(":", 2)
    os.environ["BENCH_FIT_CONFIG"] = overrides[0] if overrides else "{}"
    proc, steps = spawn(contender, workload, root=os.path.abspath(root))
    if proc is None:
        raise SystemExit(f"{spec}: {steps}")
    return proc


def main() -> None:
    specs = sys.argv[1:]
    rounds, warm = int(os.environ.get("ROUNDS", "21")), int(os.environ.get("WARM", "2"))
    workload = os.environ.get("WORKLOAD", "mlp")
    procs = {spec: _spawn(spec, workload) for spec in specs}
    cpu = {spec: [] for spec in specs}
    wall = {spec: [] for spec in specs}
    try:
        for r in range(warm + rounds):
            results = {spec: request(procs[spec]) for spec in (specs if r % 2 == 0 else specs[::-1])}
            if r >= warm:
                for spec in specs:
                    cpu[spec].append(results[spec]["cpu"])
                    wall[spec].append(results[spec]["wall"])
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=120)
    ref = specs[0]
    for spec in specs:
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu[ref], cpu[spec]))
        wall_ratio = statistics.median(a / b for a, b in zip(wall[ref], wall[spec]))
        print(f"{spec:70s} CPU/chunk {statistics.median(cpu[spec]) * 1e3:7.1f} ms  "
              f"x first: CPU {cpu_ratio:.3f} wall {wall_ratio:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
