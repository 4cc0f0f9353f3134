"""Loss benchmark: forward + backward of each library loss and tutorial example, every way to run it.

    python scripts/bench_losses.py            # full run; refreshes "Loss benchmarks" in BENCHMARKS.md
    python scripts/bench_losses.py --short    # CI smoke run: tiny batches, mostly eager, writes nothing

For every group (one loss), contestants compute the *same value* (checked)
and its gradient with respect to the predictions (the variables, for
regularizers): the tutorials' naive form, a hand-vectorized form eager, under
`tf.function` and under `tf.function(jit_compile=True)`, the Keras built-in
where one exists, and ours (`framework.losses`, the full term evaluation).
Each measurement times enough calls for ~`--target` seconds of wall time;
contestants are interleaved over `--rounds` rounds in a shuffled order and
the medians of process CPU time and wall time per call are reported, with
ratios to the group's fastest. Target: our best mode within 1.1x of the
fastest equivalent.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import re
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_losses_cases as cases  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- bench_losses:begin -->", "<!-- bench_losses:end -->"
TARGET = 1.1


def _fwd_bwd(fn, wrt=None):
    """`step(y, p) -> (value, gradient)`; gradient w.r.t. `p`, or the variables `wrt`."""

    def step(y, p):
        with tf.GradientTape() as tape:
            if wrt is None:
                tape.watch(p)
            value = fn(y, p)
        return value, tape.gradient(value, p if wrt is None else wrt)

    return step


MODES = {
    "eager": lambda f: f,
    "tf.function": tf.function,
    "xla": lambda f: tf.function(f, jit_compile=True),
}


class Contestant:
    def __init__(self, group, label, mode, fn, *, ours=False, wrt=None):
        self.group, self.label, self.mode, self.ours = group, label, mode, ours
        self.step = MODES[mode](_fwd_bwd(fn, wrt))
        self.wall, self.cpu, self.calls = [], [], 1

    @property
    def name(self) -> str:
        return f"{self.label} [{self.mode}]"

    def run(self, y, p) -> float:
        value, grad = self.step(y, p)
        tf.nest.map_structure(lambda g: g.numpy(), grad)  # wait for the result
        return float(value)

    def measure(self, y, p) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(self.calls):
            self.run(y, p)
        self.cpu.append((time.process_time() - cpu) / self.calls)
        self.wall.append((time.perf_counter() - wall) / self.calls)


def _build(group: cases.Group, short: bool) -> list[Contestant]:
    out = []
    for label, fn, modes, ours in group.implementations:
        for mode in modes:
            if short and (mode == "xla" or (mode == "tf.function" and not ours)):
                continue  # a smoke run: tracing and compiling would dominate it
            out.append(Contestant(group.name, label, mode, fn, ours=ours, wrt=group.wrt))
    return out


def run_group(group: cases.Group, *, rounds: int, target: float, short: bool, seed: int) -> list[Contestant]:
    y, p = group.data
    contestants = _build(group, short)
    values = {c.name: c.run(y, p) for c in contestants}  # traces, compiles, warms up
    reference = next(iter(values.values()))
    for name, value in values.items():
        if not np.isclose(value, reference, rtol=group.rtol, atol=1e-6):
            raise AssertionError(f"{group.name}: {name} computes {value}, expected {reference}")
    for c in contestants if target > 0 else []:  # calls per measurement: ~target seconds
        start = time.perf_counter()
        c.run(y, p)
        c.calls = max(1, int(target / max(time.perf_counter() - start, 1e-7)))
    order = random.Random(seed)
    for _ in range(rounds):
        order.shuffle(contestants)
        for c in contestants:
            c.measure(y, p)
    return sorted(contestants, key=lambda c: statistics.median(c.wall))


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}" if seconds >= 1e-5 else f"{seconds * 1e6:.1f}"


def table(results: dict[str, list[Contestant]]) -> tuple[str, list[str]]:
    lines = [
        "| loss | contestant | wall µs | CPU µs | wall × fastest | CPU × fastest |",
        "|---|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for group, contestants in results.items():
        wall = {c.name: statistics.median(c.wall) for c in contestants}
        cpu = {c.name: statistics.median(c.cpu) for c in contestants}
        fastest_wall, fastest_cpu = min(wall.values()), min(cpu.values())
        for c in contestants:
            mark = " **(ours)**" if c.ours else ""
            lines.append(
                f"| {group} | {c.name}{mark} | {_us(wall[c.name])} | {_us(cpu[c.name])} | "
                f"{wall[c.name] / fastest_wall:.2f} | {cpu[c.name] / fastest_cpu:.2f} |"
            )
        ours = [c for c in contestants if c.ours]
        others = [c for c in contestants if not c.ours]
        if ours and others:
            best = min(ours, key=lambda c: wall[c.name])
            rival = min(others, key=lambda c: wall[c.name])
            ratio = wall[best.name] / wall[rival.name]
            keras_best = min(
                (c for c in others if c.label.startswith("Keras")), key=lambda c: wall[c.name], default=None
            )
            versus_keras = (
                f"; {wall[best.name] / wall[keras_best.name]:.2f}× {keras_best.name}" if keras_best else ""
            )
            verdicts.append(
                f"{group}: ours {best.name} is {ratio:.2f}× the fastest equivalent ({rival.name}) "
                f"by wall time, {cpu[best.name] / cpu[rival.name]:.2f}× by CPU time{versus_keras}: "
                + ("within" if ratio <= TARGET else "MISSES")
                + f" the {TARGET}× target."
            )
    return "\n".join(lines), verdicts


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    return (
        f"{os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, NumPy {np.__version__}"
    )


def write_markdown(path: str, body: str) -> None:
    """Replaces (or appends) this script's section of BENCHMARKS.md."""
    section = f"{BEGIN}\n{body.strip()}\n{END}"
    text = "# Benchmarks\n"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> dict[str, list[Contestant]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--short",
        action="store_true",
        help="smoke run: tiny batches, one round, eager (ours also compiled), no write",
    )
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--target", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--only", default="", help="run groups whose name contains this")
    parser.add_argument("--write", dest="write", action="store_true", default=None)
    parser.add_argument("--no-write", dest="write", action="store_false")
    parser.add_argument("--markdown", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.short else 11)
    target = args.target or (0.0 if args.short else 0.1)
    write = (not args.short) if args.write is None else args.write
    results = {}
    for index, group in enumerate(cases.groups(short=args.short)):
        if args.only and args.only not in group.name:
            continue
        results[group.name] = run_group(group, rounds=rounds, target=target, short=args.short, seed=index)
        print(f"done: {group.name}", file=sys.stderr, flush=True)
    body, verdicts = table(results)
    if args.short:
        verdicts = ["--short is a smoke run (one call each, most contestants eager): no verdicts."]
    command = "python scripts/bench_losses.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    print(body + "\n\n" + "\n".join(f"- {v}" for v in verdicts))
    if write:
        header = (
            "## Loss benchmarks\n\n"
            f"`{command}` ({datetime.date.today()}; medians of {rounds} interleaved rounds of "
            f"~{target}s each, forward + backward per call). {_machine()}.\n\n"
        )
        write_markdown(
            args.markdown,
            header + cases.NOTES + "\n\n" + body + "\n\n" + "\n".join(f"- {v}" for v in verdicts),
        )
    return results


if __name__ == "__main__":
    main()
