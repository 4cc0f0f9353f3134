"""Run every point of a config's `get_sweep(arg)` as its own process; summarize them in one table.

    framework-sweep experiments/digits.py --config=configs/digits.py --workdir=runs/digits-sweep
    framework-sweep experiments/digits.py --config=configs/digits.py:smoke \
        --workdir=/tmp/sweep --parallel=2 --config.epochs=5
    framework-sweep experiments/digits.py --config=configs/digits.py --sweep=search \
        --workdir=runs/digits-search --search=optuna --trials=20 --monitor=val/accuracy --monitor_mode=max
    framework-sweep my_script.py --workdir=runs/my-sweep     # its own get_config and get_sweep

(`python scripts/sweep.py ...` is the same command.)

Without `--config` the script is its own config file: its `get_config()` and
`get_sweep(arg=None)` (`--sweep=` gives `arg`), and each run uses its `get_config()`.

Every override is checked against the config before the first run starts. Each
point runs in `<workdir>/<its overrides>` (output in run.log); a failed run does
not stop the others. Rerunning the command skips finished runs and resumes the
others from their checkpoints. Other flags (`--mode=...`, `--config.key=value`)
go to every run. At the end, `<workdir>/summary.md` and `summary.csv`: one row per
run, and the points' mean ± std over seeds. `tensorboard --logdir <workdir>`
shows the runs in its HParams dashboard.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

from framework import config as config_lib
from framework.config import command_line
from framework.outputs import hparams
from framework.sweeps import processes, results


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", help="the experiment script, e.g. experiments/digits.py")
    parser.add_argument(
        "--config", default=None, help="config file: path.py or path.py:arg (default: the script's own)"
    )
    parser.add_argument("--workdir", required=True, help="the sweep's directory; one subdirectory per run")
    parser.add_argument("--sweep", default=None, help="argument of get_sweep (default: the config's arg)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--monitor", default=None, help="val/ key for 'best' and the search objective")
    parser.add_argument("--monitor_mode", choices=("min", "max"), default=None)
    parser.add_argument("--search", choices=("grid", "optuna"), default="grid")
    parser.add_argument("--trials", type=int, default=20, help="--search=optuna: trials in the study")
    parser.add_argument("--pruner", choices=("median", "none"), default="median")
    parser.add_argument("--pruner_startup_trials", type=int, default=5, help="trials before any pruning")
    parser.add_argument("--seed", type=int, default=0, help="--search=optuna: the sampler's seed")
    args, flags = parser.parse_known_args(argv)
    unknown = [f for f in flags if f.startswith("-") and not command_line.override_of(f) and "=" not in f]
    if unknown:
        parser.error(f"unrecognized flags {unknown}; give run flags as --name=value")
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.parallel > (os.cpu_count() or 1):
        print(f"warning: --parallel={args.parallel} > {os.cpu_count()} CPU cores", file=sys.stderr)
    return args, flags


def command_line_overrides(flags: list[str]) -> dict[str, object]:
    """`--config.key=text` flags as values: Python literals where they parse, else the text."""
    overrides = {}
    for flag in flags:
        override = command_line.override_of(flag)
        if override:
            key, text = override[0], override[1] or ""
            try:
                overrides[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                overrides[key] = text
    return overrides


def monitor_of(config, args) -> tuple[str, str]:
    monitor = args.monitor or config.checkpoint.get("best_metric") or "val/loss"
    if args.monitor_mode:
        return monitor, args.monitor_mode
    if monitor == config.checkpoint.get("best_metric"):
        return monitor, config.checkpoint.best_mode
    return monitor, "min" if "loss" in monitor else "max"


def summarize(runs: list[processes.Run], workdir: str, monitor: str, mode: str) -> str:
    """Writes summary.md and summary.csv; returns the markdown."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    rows = []
    for run in runs:
        state, result = run.state(), results.run_result(run.workdir, monitor, mode)
        row = {"run": run.name, **run.overrides, "status": state.get("status", "not run")}
        row.update(steps=result["steps"], wall_s=state.get("wall_seconds"), **result["final"])
        row[f"best {monitor}"] = result["best"]
        if row["status"] not in processes.FINISHED:
            row["log"] = run.log
        rows.append(row)
    metrics = [c for c in results.columns_of(rows) if c.startswith(("val/", "best ")) and "/raw" not in c]
    columns = ["run", *keys, "status", "steps", "wall_s", *metrics] + (
        ["log"] if any("log" in r for r in rows) else []
    )
    results.write_csv(os.path.join(workdir, "summary.csv"), rows, columns)
    text = f"# Sweep {workdir}\n\n{results.markdown_table(rows, columns)}\n"
    points = results.aggregate_seeds(rows, keys, ["steps", "wall_s", *metrics])
    if points:
        text += f"\n## Mean ± std over seeds\n\n{results.markdown_table(points)}\n"
        results.write_csv(os.path.join(workdir, "summary_points.csv"), points)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(text)
    hparams.write_experiment(
        workdir, [run.overrides for run in runs], [m for m in metrics if m.startswith("val/")]
    )
    return text


def main(argv: list[str] | None = None) -> int:
    args, flags = parse(sys.argv[1:] if argv is None else argv)
    try:
        config, sweep = processes.load(args.config or args.script, args.sweep)
        config = command_line.apply_overrides(config, command_line_overrides(flags), "command line")
    except config_lib.ConfigError as e:
        print(f"FATAL {e}", file=sys.stderr)
        return 2
    monitor, mode = monitor_of(config, args)
    try:
        if args.search == "optuna":
            from framework.sweeps import search

            runs = search.run(args, flags, config, sweep, monitor, mode)
        else:
            if isinstance(sweep, dict):
                raise config_lib.ConfigError(
                    "get_sweep returned a search space (a dict); run it with --search=optuna, or return "
                    "a list of points for a grid."
                )
            overridden = set(command_line_overrides(flags))
            for i, point in enumerate(sweep):
                for key in overridden & point.keys():
                    raise config_lib.ConfigError(f"--config.{key} is also set by sweep point {i}.")
                command_line.apply_overrides(config, point, f"sweep point {i} {point}")
            runs = processes.plan(args.workdir, sweep)
            os.makedirs(args.workdir, exist_ok=True)
            print(f"Sweep: {len(runs)} runs in {args.workdir}, {args.parallel} at a time.", flush=True)
            processes.Runner(args.script, args.config, flags, args.parallel).run(runs)
    except config_lib.ConfigError as e:
        print(f"FATAL {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted: rerun the same command to resume.", file=sys.stderr)
        return 130
    print(summarize(runs, args.workdir, monitor, mode))
    failed = [run for run in runs if run.state().get("status") == "failed"]
    for run in failed:
        print(f"FAILED {run.name}: see {run.log}")
    return 1 if failed else 0


def console_main() -> None:
    """The `framework-sweep` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
