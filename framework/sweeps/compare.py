"""Compare runs: a table of their final `val/` metrics and an overlay plot of chosen keys over steps.

    framework-compare runs/digits-sweep/*/ --out compare.png
    framework-compare runs/a runs/b --keys loss,val/accuracy --monitor val/accuracy

Works on any run workdirs (from a sweep or made by hand): it reads their
metrics.jsonl. The plot is `framework.sweeps.run_plot`'s: one panel per key, one line per run.
"""

from __future__ import annotations

import argparse
import os

from framework.sweeps import results, run_plot


def table(workdirs: list[str], monitor: str, mode: str) -> list[dict]:
    """One row per run: steps, epochs, logged seconds, final `val/` metrics, best `monitor`."""
    rows = []
    for workdir in workdirs:
        result = results.run_result(workdir, monitor, mode)
        row = {"run": os.path.normpath(workdir), "steps": result["steps"], "epochs": result["epochs"]}
        row["log_s"] = round(result["log_seconds"], 1)
        row.update({k: v for k, v in result["final"].items() if "/raw" not in k})
        row[f"best {monitor}"] = result["best"]
        row["best step"] = result["best_step"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--out", default="compare.png", help="the overlay plot (PNG)")
    parser.add_argument("--keys", help="comma-separated logged keys to plot, e.g. loss,val/accuracy")
    parser.add_argument("--monitor", default="val/loss", help="the key whose best value is reported")
    parser.add_argument(
        "--monitor_mode", choices=("min", "max"), default=None, help="default: min for losses"
    )
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    missing = [w for w in args.workdirs if not os.path.exists(os.path.join(w, "metrics.jsonl"))]
    if missing:
        parser.error(f"no metrics.jsonl in {', '.join(missing)} (run workdirs expected)")
    mode = args.monitor_mode or ("min" if "loss" in args.monitor else "max")
    rows = table(args.workdirs, args.monitor, mode)
    print(results.markdown_table(rows))
    if args.csv:
        results.write_csv(args.csv, rows)
    keys = args.keys.split(",") if args.keys else None
    print(run_plot.plot(args.workdirs, args.out, keys))


if __name__ == "__main__":
    main()
