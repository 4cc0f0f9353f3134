"""Training-loop overhead: Trainer.fit against a bare compiled loop, Keras fit and eager.

    python scripts/bench.py [--rounds 5] [--quick] [--real] [--json out.json] [--markdown]

Every contestant trains the same model on the same cached data with the same
batch size, SGD and one accuracy metric. Each runs in its own process (so its
peak RSS is its own), and the processes take turns one epoch at a time
(interleaved rounds), so a slow phase of this shared machine hits everyone.
The first two epochs are warm-up (tracing, caches) and not timed. Reported:
steady-state steps per CPU-second (`time.process_time`, all threads of the
process) and per wall-second, each as the median over rounds of the ratio
to the bare loop measured in the same round; peak RSS; train-function traces.

With --real: the experiments' full-size ResNet (configs/images.py) and
Transformer LM (configs/lm.py) on in-memory data of their shapes, 16 steps an
epoch, against the bare loop and Keras fit; also the time to the first step
(start-up: imports, model build, tracing).

Contestants:
  fit_default  Trainer.fit() with framework.config.defaults() (what users get)
  fit_tuned    Trainer.fit() with steps_per_execution=64 (and XLA with --xla)
  bare         a tf.function running 32 steps in a tf.range loop (the floor)
  keras_spe1   Keras model.fit, steps_per_execution=1 (Keras' default)
  keras_spe32  Keras model.fit, steps_per_execution=32
  eager        a Python loop of eager GradientTape steps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTESTANTS = ["fit_default", "fit_tuned", "bare", "keras_spe1", "keras_spe32", "eager"]
SCENARIOS = [("mlp", 64), ("mlp", 512), ("cnn", 64), ("cnn", 512)]
# The experiments' full-size models (experiments/images.py, experiments/lm.py) on in-memory data of
# their shapes: per-step compute dominates here. Short epochs: 16 steps.
REAL_SCENARIOS = [("resnet", 128), ("lm", 16)]
ROWS = {"mlp": 32768, "cnn": 8192, "resnet": 128 * 16, "lm": 16 * 16}
LM_SEQ_LEN = 128


# ---- worker side: one contestant, one scenario, one epoch per request -------------


def _data(model: str, batch: int):
    import numpy as np

    rows = ROWS[model]
    rng = np.random.default_rng(0)
    if model == "lm":
        tokens = rng.integers(0, 256, (rows, LM_SEQ_LEN + 1)).astype("int32")
        return tokens[:, :-1], tokens[:, 1:]
    shape = {"mlp": (64,), "cnn": (28, 28, 1), "resnet": (32, 32, 3)}[model]
    x = rng.normal(size=(rows, *shape)).astype("float32")
    y = rng.integers(0, 10, rows).astype("int32")
    return x, y


def _model(kind: str):
    import keras

    keras.utils.set_random_seed(0)
    if kind in ("resnet", "lm"):
        sys.path.insert(0, os.path.join(ROOT, "experiments"))
        if kind == "resnet":
            from images import resnet

            return resnet((32, 64, 128, 256), (1, 1, 2, 1), sync_bn=False, stem_stride=2)  # configs/images.py
        from lm import transformer_lm

        return transformer_lm(LM_SEQ_LEN, 160, 4, 4)  # configs/lm.py
    if kind == "mlp":
        layers = [keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)]
    else:
        layers = [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    return keras.Sequential(layers)


def _runner(contestant: str, model_kind: str, batch: int, xla: bool):
    """Returns (run_one_epoch, traces) for the contestant."""
    import keras
    import tensorflow as tf

    x, y = _data(model_kind, batch)
    steps = len(x) // batch

    def dataset():
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).cache()

    if contestant.startswith("fit_"):
        import framework
        from framework import losses

        class Bench(framework.Trainer):
            def build_model(self):
                return _model(model_kind)

            def build_loss(self):
                return losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True))

            def build_metrics(self):
                return [keras.metrics.SparseCategoricalAccuracy(name="acc")]

            def build_train_dataset(self, input_context):
                return dataset()

        config = framework.config.defaults()
        config.batch_size = batch
        config.epochs = 0
        config.optimizer.name = "sgd"
        config.optimizer.learning_rate = 0.01
        if contestant == "fit_tuned":
            config.steps_per_execution = 64
            config.jit_compile = xla
        trainer = Bench(config)

        def epoch():
            with trainer.config.unlocked():
                trainer.config.epochs += 1
            trainer.fit()

        return epoch, lambda: trainer.controller.train_fn.experimental_get_tracing_count()

    model = _model(model_kind)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(0.01)
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    if contestant.startswith("keras_"):
        model.compile(
            optimizer=optimizer, loss=loss_fn, metrics=[accuracy],
            steps_per_execution=1 if contestant == "keras_spe1" else 32,
        )  # fmt: skip
        data = dataset()
        return lambda: model.fit(data, epochs=1, verbose=0), lambda: -1

    optimizer.build(model.trainable_variables)

    data = dataset()
    if contestant == "eager":

        def epoch():
            accuracy.reset_state()
            for xb, yb in data:
                with tf.GradientTape() as tape:
                    logits = model(xb, training=True)
                    loss = loss_fn(yb, logits)
                optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
                accuracy.update_state(yb, logits)

        return epoch, lambda: 0

    @tf.function
    def multi(iterator, n):
        for _ in tf.range(n):
            xb, yb = next(iterator)
            with tf.GradientTape() as tape:
                logits = model(xb, training=True)
                loss = loss_fn(yb, logits)
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            accuracy.update_state(yb, logits)

    def epoch():
        accuracy.reset_state()
        iterator = iter(data)
        done = 0
        while done < steps:
            n = min(32, steps - done)
            multi(iterator, tf.constant(n))
            done += n
        float(accuracy.result())

    return epoch, lambda: multi.experimental_get_tracing_count()


def _current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(contestant: str, model_kind: str, batch: int, xla: bool) -> None:
    start = time.perf_counter()  # before TensorFlow is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, ROOT)
    epoch, traces = _runner(contestant, model_kind, batch, xla)
    steps = ROWS[model_kind] // batch
    print(json.dumps({"ready": True, "steps": steps, "start_s": time.perf_counter() - start}), flush=True)
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        wall, cpu = time.perf_counter(), time.process_time()
        epoch()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"wall": wall, "cpu": cpu, "rss_mb": peak, "now_mb": _current_rss_mb(), "traces": traces()}),
              flush=True)  # fmt: skip


# ---- orchestrator ---------------------------------------------------------------


def _spawn(contestant, model_kind, batch, xla):
    args = [sys.executable, __file__, "--worker", contestant, model_kind, str(batch)] + (
        ["--xla"] if xla else []
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)  # fmt: skip
    header = json.loads(proc.stdout.readline())
    return proc, header["steps"], header["start_s"]


def _epoch(proc) -> dict:
    proc.stdin.write("epoch\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("benchmark worker died")
    return json.loads(line)


def run_scenario(model_kind: str, batch: int, rounds: int, warmup: int, xla: bool, contestants) -> dict:
    procs = {c: _spawn(c, model_kind, batch, xla) for c in contestants}
    samples = {c: [] for c in contestants}
    first_epoch = {}
    try:
        for r in range(warmup + rounds):
            for c in contestants:
                result = _epoch(procs[c][0])
                if r == 0:
                    first_epoch[c] = result["wall"]
                if r >= warmup:
                    samples[c].append(result)
    finally:
        for proc, _, _ in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    out = {}
    for c in contestants:
        steps = procs[c][1]
        out[c] = {
            "steps_per_cpu_s": statistics.median(steps / s["cpu"] for s in samples[c]),
            "steps_per_wall_s": statistics.median(steps / s["wall"] for s in samples[c]),
            "cpu_ratio_to_bare": statistics.median(
                samples["bare"][i]["cpu"] / s["cpu"] for i, s in enumerate(samples[c])
            ),
            "wall_ratio_to_bare": statistics.median(
                samples["bare"][i]["wall"] / s["wall"] for i, s in enumerate(samples[c])
            ),
            "peak_rss_mb": samples[c][-1]["rss_mb"],
            "traces": samples[c][-1]["traces"],
            # Start-up (imports, data, model) + the first epoch less its steps after the first at the
            # steady-state rate: the time until the first step is done (tracing included).
            "first_step_s": procs[c][2] + first_epoch[c] - (steps - 1) * statistics.median(s["wall"] for s in samples[c]) / steps,
        }  # fmt: skip
    return out


def rss_growth(epochs: int) -> dict:
    """Trainer.fit resident memory after epoch 2 and after epoch `epochs` (MLP, batch 64)."""
    proc, _, _ = _spawn("fit_default", "mlp", 64, False)
    try:
        rss = [_epoch(proc)["now_mb"] for _ in range(epochs)]
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    return {"rss_epoch_2_mb": rss[1], f"rss_epoch_{epochs}_mb": rss[-1], "growth_mb": rss[-1] - rss[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("CONTESTANT", "MODEL", "BATCH"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--xla", action="store_true", help="fit_tuned also compiles with XLA")
    parser.add_argument("--quick", action="store_true", help="MLP batch 64 only, 2 rounds (for CI)")
    parser.add_argument("--only", help="comma-separated scenarios, e.g. mlp/64,cnn/512,resnet/128")
    parser.add_argument(
        "--real", action="store_true", help="the experiments' ResNet and Transformer LM (short epochs) only"
    )
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]), args.xla)
        return
    scenarios = SCENARIOS[:1] if args.quick else SCENARIOS + REAL_SCENARIOS
    if args.real:
        scenarios = REAL_SCENARIOS
    if args.only:
        wanted = {tuple(item.split("/")) for item in args.only.split(",")}
        scenarios = [(m, b) for m, b in scenarios if (m, str(b)) in wanted]
    rounds = 2 if args.quick else args.rounds
    contestants = ["fit_default", "bare", "keras_spe32"] if args.quick or args.real else CONTESTANTS
    results = {}
    for model_kind, batch in scenarios:
        key = f"{model_kind}/batch{batch}"
        results[key] = run_scenario(model_kind, batch, rounds, args.warmup, args.xla, contestants)
        _print(key, results[key], args.markdown)
    if not args.quick and not args.only and not args.real:
        results["rss"] = rss_growth(20)
        print(f"RSS (fit_default, MLP batch 64): {results['rss']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def _print(key: str, rows: dict, markdown: bool) -> None:
    cols = [
        "steps_per_cpu_s",
        "steps_per_wall_s",
        "cpu_ratio_to_bare",
        "wall_ratio_to_bare",
        "peak_rss_mb",
        "traces",
        "first_step_s",
    ]
    if markdown:
        print(f"\n### {key}\n")
        print(
            "| contestant | steps/CPU-s | steps/wall-s | × bare (CPU) | × bare (wall) | peak RSS MB | traces "
            "| first step s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for c, r in rows.items():
            print(f"| {c} | " + " | ".join((f"{r[k]:.2f}" if r[k] < 10 else f"{r[k]:.0f}") if k.startswith("steps") or k == "peak_rss_mb"
                                            else (f"{r[k]:.3f}" if "ratio" in k else (f"{r[k]:.1f}" if k == "first_step_s" else str(r[k]))) for k in cols) + " |")  # fmt: skip
    else:
        print(f"\n{key}")
        print(f"  {'contestant':<12} " + " ".join(f"{c:>18}" for c in cols))
        for c, r in rows.items():
            print(f"  {c:<12} " + " ".join(f"{r[k]:>18.3f}" for k in cols))


if __name__ == "__main__":
    main()
