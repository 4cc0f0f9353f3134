"""Plot loss and metric curves of one or more runs (from their metrics.jsonl) into a PNG.

    python scripts/plot_run.py runs/imbalanced_bce runs/imbalanced_focal --out compare.png
    python scripts/plot_run.py runs/digits --keys loss,val/accuracy

One panel per key, one line per run (named after its workdir), against the
training step. Train keys come from the log points, `val/` keys from the
evaluations. By default: `loss`, `val/loss`, then every metric (not the
per-term losses) that the runs logged, up to `--max-panels`.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_run(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{workdir}: no metrics.jsonl (is it a run's workdir?)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    kind = "eval" if key.startswith("val/") else "train"
    points = {}
    for record in records:
        value = record.get(key)
        if record.get("kind") == kind and isinstance(value, (int, float)):
            points[record["step"]] = value  # a resumed run may log a step twice: keep the last
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def default_keys(runs: dict[str, list[dict]], limit: int) -> list[str]:
    seen: list[str] = []
    for records in runs.values():
        for record in records:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in seen:
                    seen.append(key)
    skip = {"step", "epoch", "time", "steps_per_sec"}
    metrics = [
        k
        for k in seen
        if k not in skip and "loss" not in k.split("/")[-1] and not k.startswith(("loss", "val/loss"))
    ]
    keys = [k for k in ("loss", "val/loss") if k in seen] + metrics
    return keys[:limit]


def plot(workdirs: list[str], out: str, keys: list[str] | None = None, max_panels: int = 9) -> str:
    names = [os.path.basename(os.path.normpath(w)) or w for w in workdirs]
    if len(set(names)) < len(names):  # e.g. the same point of two sweeps
        names = [os.path.normpath(w) for w in workdirs]
    runs = {name: read_run(w) for name, w in zip(names, workdirs)}
    keys = keys or default_keys(runs, max_panels)
    if not keys:
        raise SystemExit("nothing to plot: the runs logged no values")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, records in runs.items():
            steps, values = series(records, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--out", default="run.png")
    parser.add_argument("--keys", help="comma-separated logged keys, e.g. loss,val/accuracy")
    parser.add_argument("--max-panels", type=int, default=9)
    args = parser.parse_args()
    keys = args.keys.split(",") if args.keys else None
    print(plot(args.workdirs, args.out, keys, args.max_panels))


if __name__ == "__main__":
    main()
