"""Where Trainer.fit's per-step time goes on the MLP: op counts and the compiled call alone, per piece.

    python scripts/bench_profile.py ops                  # loop-body op counts: bare_chunk's vs Trainer.fit's
    python scripts/bench_profile.py calls [--rounds 40]  # one compiled 512-step call: Trainer's vs bare's
    python scripts/bench_profile.py pieces [--rounds 40] [--only guard,counter]
                                                         # `calls` in scratch copies, one piece switched off each
    python scripts/bench_profile.py traces               # CPU of each trace and AutoGraph conversion, two-head fit

`ops` counts the nodes of the `tf.range` loop's body, expanded through the
functions it calls (the finiteness guard's branches). `calls` times, in one
process, the trainer's compiled train function and the bare loop's (bench.py's
`bare_chunk`, same model, data and metric) on fresh iterators of one 512-step
epoch each, in alternating order: CPU time per step and the median of per-round
ratios bare/fit. Nothing of fit() around the call is timed (see
`bench.py --split` for that). `pieces` runs `calls` in copies of this checkout
under a temporary directory, each with one piece of the step switched off
(PIECES below): the change of the ratio is that piece's cost. The copies are
scratch: switching a piece off gives up exactness (no NaN guard, no step
counter, no logs) and is never an option for the library.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# piece -> (file, the text, its replacement): each switches one piece of the step off.
PIECES = {
    "guard": ("framework/optim/updates.py",
              "_run_if(finite, lambda: optimizer.apply(grads, variables), on_nonfinite)",
              "optimizer.apply(grads, variables)"),
    "counter": ("framework/trainer/compiled_steps.py",
                "on_step=lambda: counters.step.assign_add(1),", "on_step=None,"),
    "keep_going": ("framework/trainer/compiled_steps.py",
                   "keep_going=None if skip else lambda: counters.nonfinite_step < 0,", "keep_going=None,"),
    "logs": ("framework/loop/step_function.py",
             "        if packed is None:\n            packed = tf.zeros([0])",
             "        packed = tf.ones([len(layout.parts) * 2])"),
    "replica_streams": ("framework/loop/step_function.py",
                        "        with randomness.replica_streams():\n            logs_of_step = replica_step(batch)",
                        "        logs_of_step = replica_step(batch)"),
}  # fmt: skip


def _contenders(epochs: int = 1):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import bench

    spec = dict(bench.WORKLOADS["mlp"], epochs_per_chunk=epochs)
    fit, bare = bench._Contender("fit_trimmed", "mlp", spec), bench._Contender("bare_chunk", "mlp", spec)
    fit.chunk(), bare.chunk()  # traces both
    return fit, bare


def _bare_steps(bare):
    return next(
        c.cell_contents for c in bare.chunk.__closure__ if hasattr(c.cell_contents, "get_concrete_function")
    )


def ops() -> None:
    """Prints the loop body's op counts by type where bare and fit differ."""
    import tensorflow as tf

    fit, bare = _contenders()
    graphs = {
        "bare": _bare_steps(bare).get_concrete_function(iter(bare.data), tf.constant(1)).graph.as_graph_def(),
        "fit": fit.trainer.controller.train_fn._concrete.graph.as_graph_def(),
    }
    counts = {name: _body_ops(graph) for name, graph in graphs.items()}
    print("| op | bare_chunk | Trainer.fit |\n|---|---|---|")
    for op in sorted(set(counts["bare"]) | set(counts["fit"])):
        if counts["bare"][op] != counts["fit"][op]:
            print(f"| {op} | {counts['bare'][op]} | {counts['fit'][op]} |")
    total = {name: sum(n for op, n in c.items() if not op.startswith("(")) for name, c in counts.items()}
    print(f"| all ops | {total['bare']} | {total['fit']} |")


def _body_ops(graph_def) -> collections.Counter:
    library = {f.signature.name: f for f in graph_def.library.function}

    def expand(nodes) -> collections.Counter:
        counts = collections.Counter()
        for node in nodes:
            counts[node.op] += 1
            if node.op in ("If", "StatelessIf"):  # lowered to a Switch per input, a Merge per output
                counts["(If inputs: a Switch each)"] += len(node.input) - 1
                counts["(If outputs: a Merge each)"] += len(node.attr["Tout"].list.type)
            called = [node.op] + [a.func.name for a in node.attr.values() if a.HasField("func")]
            called += [f.name for a in node.attr.values() if a.HasField("list") for f in a.list.func]
            for name in called:
                if name in library:
                    counts += expand(library[name].node_def)
        return counts

    bodies = [f for name, f in library.items() if "while_body" in name]
    return sum((expand(f.node_def) for f in bodies), collections.Counter())


def calls(rounds: int, label: str = "this checkout") -> float:
    """Prints and returns the median of per-round CPU ratios bare/fit of one compiled 512-step call."""
    import tensorflow as tf

    fit, bare = _contenders()
    steps = fit.steps_per_epoch
    train_fn, bare_fn = fit.trainer.controller.train_fn._concrete, _bare_steps(bare)
    bare_call = bare_fn.get_concrete_function(iter(bare.data), tf.constant(steps))
    count_dtype = train_fn.structured_input_signature[0][1].dtype

    def timed(call, data, n) -> float:
        iterator = iter(data)
        start = time.process_time()
        call(iterator, n)
        return time.process_time() - start

    fit_n, bare_n = tf.constant(steps, count_dtype), tf.constant(steps)
    cpu = {"fit": [], "bare": []}
    for r in range(rounds):
        for who in ("fit", "bare") if r % 2 else ("bare", "fit"):
            call, data, n = (train_fn, fit.data, fit_n) if who == "fit" else (bare_call, bare.data, bare_n)
            cpu[who].append(timed(call, data, n))
    ratio = statistics.median(b / f for b, f in zip(cpu["bare"], cpu["fit"]))
    per_step = {k: statistics.median(v) / steps * 1e6 for k, v in cpu.items()}
    print(f"{label}: compiled call {per_step['fit']:.1f} µs/step, bare {per_step['bare']:.1f} µs/step, "
          f"bare/fit {ratio:.3f} (median of {rounds} rounds)", flush=True)  # fmt: skip
    return ratio


def pieces(rounds: int, only: list[str] | None) -> None:
    """`calls` in scratch copies of this checkout, each with one piece of PIECES switched off."""
    with tempfile.TemporaryDirectory(prefix="bench_pieces_") as tmp:
        for piece in ["none", *(only or PIECES)]:
            copy = os.path.join(tmp, piece)
            for part in ("framework", "scripts", "experiments"):
                shutil.copytree(os.path.join(ROOT, part), os.path.join(copy, part))
            if piece != "none":
                path, text, replacement = PIECES[piece]
                with open(os.path.join(copy, path)) as f:
                    source = f.read()
                if text not in source:
                    raise SystemExit(f"{piece}: {path} no longer holds {text!r}; update PIECES")
                with open(os.path.join(copy, path), "w") as f:
                    f.write(source.replace(text, replacement))
            script = os.path.join(copy, "scripts", "bench_profile.py")
            args = [
                sys.executable,
                script,
                "calls",
                "--rounds",
                str(rounds),
                "--label",
                "nothing off" if piece == "none" else f"without {piece}",
            ]
            env = {**os.environ, "PYTHONPATH": copy, "TF_CPP_MIN_LOG_LEVEL": "2"}
            subprocess.run(args, env=env, check=True, stderr=subprocess.DEVNULL)


def traces() -> None:
    """CPU of each trace and each AutoGraph conversion in a fit() of tests/two_heads.py's trainer."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import two_heads
    from tensorflow.python.autograph.impl import api
    from tensorflow.python.eager.polymorphic_function import tracing_compilation

    def timing(owner, attr, label):
        inner = getattr(owner, attr)

        def wrapper(*args):
            start = time.process_time()
            try:
                return inner(*args)
            finally:
                print(f"{label(args)}: {(time.process_time() - start) * 1e3:.0f} ms CPU")

        setattr(owner, attr, wrapper)

    timing(tracing_compilation, "_create_concrete_function", lambda a: f"trace {a[3].name}")
    timing(api._TRANSPILER, "transform", lambda a: f"  AutoGraph converts {a[0].__qualname__}")
    start = time.process_time()
    two_heads.TwoHeads(two_heads.get_config()).fit()
    print(f"trainer built and fit: {time.process_time() - start:.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["ops", "calls", "pieces", "traces"])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--only", help="comma-separated pieces (default: all)")
    parser.add_argument("--label", default="this checkout")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, ROOT)
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    if args.mode == "ops":
        ops()
    elif args.mode == "calls":
        calls(args.rounds, args.label)
    elif args.mode == "pieces":
        pieces(args.rounds, args.only.split(",") if args.only else None)
    else:
        traces()


if __name__ == "__main__":
    main()
