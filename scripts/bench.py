"""Training-loop overhead on one protocol: Trainer.fit against bare loops, Keras fit and Orbit.

    python scripts/bench.py [--rounds 7] [--quick] [--only mlp,resnet,lm] [--json out.json] [--markdown]

Every contender trains the same model (same initial weights) on the same cached,
unshuffled in-memory data with the same batch size, SGD(0.01) and one accuracy
metric, in its own process (its peak RSS is its own). A timed chunk is ONE
user-level call that trains `epochs_per_chunk` epochs: `trainer.fit()` with
`config.epochs` raised, `model.fit(epochs=E)`, Orbit's `controller.train(steps)`,
or the bare loop's chunk function. The processes take turns one chunk at a time,
in an order reversed every round, so a slow phase of the shared machine hits
everyone; the first round is warm-up (tracing, caches). Reported: steps per
CPU-second (`time.process_time`, all threads of the process) and per wall-second;
each contender's median over rounds of its per-round ratio to the fastest bare
loop of that round; peak RSS; traces of the step (Python runs of the step body);
and a work check: after the last round every contender reports its optimizer
step count and the loss of its final weights on the first batches, which must
agree across contenders (steps exactly, loss within LOSS_RTOL).

Contenders:
  fit_default        Trainer.fit() with framework.config.defaults() and a workdir: what users run
                     (checkpoints, metrics.jsonl, TensorBoard, progress log)
  fit_trimmed        Trainer.fit() with the defaults and no workdir
  bare_32            a tf.function running 32 steps in a tf.range loop per call, no strategy
  bare_chunk         one tf.function call runs the whole chunk, no strategy
  bare_strategy_32   as bare_32, the step under OneDeviceStrategy.run on a distributed dataset
  bare_strategy_chunk  as bare_chunk, under OneDeviceStrategy
  keras_spe1/32      Keras model.fit, steps_per_execution=1 (its default) / 32
  keras_spe_auto     model.fit with steps_per_execution="auto" (only if this Keras accepts it)
  orbit              Orbit's StandardTrainer (tf.while_loop) + Controller(steps_per_loop=100), global
                     step from orbit.utils.create_global_step(); only when `import orbit` works
                     (`pip install tf-models-official --no-deps`; its unused tf_keras import is stubbed)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARE = ["bare_32", "bare_chunk", "bare_strategy_32", "bare_strategy_chunk"]
KERAS = ["keras_spe1", "keras_spe32", "keras_spe_auto"]
CONTENDERS = ["fit_default", "fit_trimmed", *BARE, *KERAS, "orbit"]
QUICK_CONTENDERS = ["fit_default", "fit_trimmed", "bare_32", "bare_chunk", "keras_spe32"]
# workload: batch, rows (one epoch), epochs per timed chunk, rounds by default.
WORKLOADS = {
    # 512 steps an epoch, 4,096 a chunk (~2 s of CPU): overhead-bound
    "mlp": {"batch": 64, "rows": 32768, "epochs_per_chunk": 8},
    # 48 steps a chunk (~5 s of CPU for the ResNet, ~12 s for the LM): per-round ratios within a
    # few percent (12 steps left them within ±10%), the whole bench ~15 minutes on 2 idle cores.
    "resnet": {"batch": 32, "rows": 32 * 48, "epochs_per_chunk": 1},  # configs/images.py's ResNet
    "lm": {"batch": 8, "rows": 8 * 48, "epochs_per_chunk": 1},  # configs/lm.py's Transformer
}
QUICK_WORKLOAD = {"batch": 64, "rows": 64 * 64, "epochs_per_chunk": 2}
LM_SEQ_LEN = 128
LOSS_RTOL = 1e-3  # float32 sums in different orders, over every step of the run
CHECK_BATCHES = 4


# ---- worker side: one contender, one workload, one chunk per request -------------


def _data(kind: str, rows: int):
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == "lm":
        tokens = rng.integers(0, 256, (rows, LM_SEQ_LEN + 1)).astype("int32")
        return tokens[:, :-1], tokens[:, 1:]
    shape = {"mlp": (64,), "resnet": (32, 32, 3)}[kind]
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
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)]
    )


def _loss_fn(kind: str):
    import keras

    if kind == "lm":
        sys.path.insert(0, os.path.join(ROOT, "experiments"))
        from lm import token_cross_entropy

        return token_cross_entropy  # per token; every contender averages over all tokens
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _Contender:
    """chunk(): one user-level call of `epochs` epochs; check(): (optimizer steps, loss of the weights now)."""

    def __init__(self, name: str, kind: str, spec: dict):
        import tensorflow as tf

        self.name, self.kind, self.spec = name, kind, spec
        x, y = _data(kind, spec["rows"])
        self.steps_per_epoch = spec["rows"] // spec["batch"]
        self.epochs = spec["epochs_per_chunk"]
        self.traces = 0
        self.data = (
            tf.data.Dataset.from_tensor_slices((x, y)).batch(spec["batch"], drop_remainder=True).cache()
        )
        self.check_batches = [b for b in self.data.take(CHECK_BATCHES)]
        self.loss_fn = _loss_fn(kind)
        self.tmp = None
        builder = getattr(self, "_build_" + name.split("_")[0])
        builder()

    def check(self) -> dict:
        import tensorflow as tf

        losses = [
            float(tf.reduce_mean(self.loss_fn(y, self.model(x, training=False))))
            for x, y in self.check_batches
        ]
        return {"optimizer_steps": self.optimizer_steps(), "loss": sum(losses) / len(losses)}

    # -- Trainer.fit --
    def _build_fit(self):
        import keras

        import framework
        from framework import losses

        kind, data = self.kind, self.data
        metric = "acc" if kind != "lm" else None

        class Bench(framework.Trainer):
            def build_model(self):
                return _model(kind)

            def build_loss(self):
                return losses.Term(_loss_fn(kind))

            def build_metrics(self):
                return [keras.metrics.SparseCategoricalAccuracy(name=metric or "acc")]

            def build_train_dataset(self, input_context):
                return data

        config = framework.config.defaults()
        config.batch_size = self.spec["batch"]
        config.epochs = 0
        config.optimizer.name = "sgd"
        config.optimizer.learning_rate = 0.01
        # A/B of a setting (scripts/bench_ab.py): BENCH_FIT_CONFIG='{"checkpoint.every_epochs": 0}'
        for key, value in json.loads(os.environ.get("BENCH_FIT_CONFIG", "{}")).items():
            section, _, leaf = key.rpartition(".")
            (config[section] if section else config)[leaf] = value
        if self.name == "fit_default":
            self.tmp = tempfile.TemporaryDirectory(prefix="bench_fit_")
            self.trainer = Bench(config, workdir=os.path.join(self.tmp.name, "run"))
        else:
            self.trainer = Bench(config)
        self.model = self.trainer.model

        def chunk():
            with self.trainer.config.unlocked():
                self.trainer.config.epochs += self.epochs
            self.trainer.fit()

        self.chunk = chunk
        self.optimizer_steps = lambda: int(self.trainer.step)
        self.trace_count = lambda: self.trainer.controller.train_fn.experimental_get_tracing_count()

    def _plain(self):
        import keras

        self.model = _model(self.kind)
        self.optimizer = keras.optimizers.SGD(0.01)
        self.accuracy = keras.metrics.SparseCategoricalAccuracy()
        self.optimizer_steps = lambda: int(self.optimizer.iterations.numpy())
        self.trace_count = lambda: self.traces

    def _train_step(self, x, y):
        import tensorflow as tf

        self.traces += 1  # Python runs only while tracing
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss = tf.reduce_mean(self.loss_fn(y, logits))
        variables = self.model.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.accuracy.update_state(y, logits)
        return loss

    # -- bare loops --
    def _build_bare(self):
        import tensorflow as tf

        self._plain()
        per_call = 32 if self.name.endswith("_32") else None
        if "strategy" in self.name:
            strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
            with strategy.scope():
                self.optimizer.build(self.model.trainable_variables)
            data = strategy.experimental_distribute_dataset(self.data)

            def step(iterator):
                strategy.run(self._train_step, args=next(iterator))
        else:
            self.optimizer.build(self.model.trainable_variables)
            data = self.data

            def step(iterator):
                self._train_step(*next(iterator))

        @tf.function
        def steps(iterator, n):
            for _ in tf.range(n):
                step(iterator)

        def chunk():
            self.accuracy.reset_state()
            for _ in range(self.epochs):
                iterator, done, total = iter(data), 0, self.steps_per_epoch
                if per_call is None:
                    steps(iterator, tf.constant(total))
                while per_call and done < total:
                    n = min(per_call, total - done)
                    steps(iterator, tf.constant(n))
                    done += n
            float(self.accuracy.result())

        self.chunk = chunk

    # -- Keras fit --
    def _build_keras(self):
        self._plain()
        import keras

        spe = {"keras_spe1": 1, "keras_spe32": 32, "keras_spe_auto": "auto"}[self.name]
        if spe == "auto" and not hasattr(self.model, "_steps_per_execution_tuner"):
            # Keras 3.15's compile() accepts "auto", then fit() fails with a TypeError.
            raise ValueError(f"Keras {keras.__version__} has no steps_per_execution='auto'")
        self.model.compile(optimizer=self.optimizer, loss=self.loss_fn, metrics=[self.accuracy],
                           steps_per_execution=spe)  # fmt: skip
        train_step = self.model.train_step

        def counted(data):
            self.traces += 1
            return train_step(data)

        self.model.train_step = counted
        self.chunk = lambda: self.model.fit(self.data, epochs=self.epochs, verbose=0)

    # -- Orbit --
    def _build_orbit(self):
        import types

        sys.modules.setdefault("tf_keras", types.ModuleType("tf_keras"))  # imported, unused by orbit's core
        import orbit

        self._plain()
        self.optimizer.build(self.model.trainable_variables)
        bench = self

        class Trainer(orbit.StandardTrainer):
            def __init__(self):
                self.global_step = orbit.utils.create_global_step()
                super().__init__(bench.data.repeat(), orbit.StandardTrainerOptions(use_tf_while_loop=True))

            def train_loop_begin(self):
                bench.accuracy.reset_state()

            def train_step(self, iterator):
                bench._train_step(*next(iterator))
                self.global_step.assign_add(1)

            def train_loop_end(self):
                return {"accuracy": bench.accuracy.result()}

        trainer = Trainer()
        controller = orbit.Controller(trainer=trainer, global_step=trainer.global_step, steps_per_loop=100)
        self.chunk = lambda: controller.train(
            steps=int(trainer.global_step.numpy()) + self.epochs * self.steps_per_epoch
        )


def _current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(name: str, kind: str, quick: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The replies go to the real stdout; whatever else prints (Orbit's train lines) goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    sys.path.insert(0, ROOT)
    spec = QUICK_WORKLOAD if quick else WORKLOADS[kind]
    try:
        contender = _Contender(name, kind, spec)
    except (ImportError, ValueError, TypeError) as e:  # orbit not installed; a Keras without spe "auto"
        reply({"unavailable": f"{type(e).__name__}: {e}"[:300]})
        return
    steps = contender.steps_per_epoch * contender.epochs
    reply({"ready": True, "steps": steps})
    for line in sys.stdin:
        command = line.strip()
        if command == "check":
            reply(contender.check())
            continue
        if command not in ("chunk", "epoch"):
            break
        wall, cpu = time.perf_counter(), time.process_time()
        contender.chunk()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        reply(
            {
                "wall": wall,
                "cpu": cpu,
                "rss_mb": peak,
                "now_mb": _current_rss_mb(),
                "traces": contender.trace_count(),
            }
        )


# ---- orchestrator ---------------------------------------------------------------


def spawn(name: str, kind: str, quick: bool = False, root: str = ROOT):
    """Starts a worker of checkout `root`; returns (process, steps per chunk) or (None, why unavailable)."""
    return ready(start(name, kind, quick, root))


def start(name: str, kind: str, quick: bool = False, root: str = ROOT) -> subprocess.Popen:
    """Starts a worker of checkout `root` (`ready` waits for it: start them all, then wait)."""
    args = [sys.executable, os.path.join(root, "scripts", "bench.py"), "--worker", name, kind]
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    log = open(os.path.join(tempfile.gettempdir(), f"bench_{name}_{kind}.log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(args + (["--quick"] if quick else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log, text=True, env=env)  # fmt: skip
    proc.log_path = log.name
    return proc


def ready(proc: subprocess.Popen):
    """(process, steps per chunk) once the worker has built its contender, or (None, why unavailable)."""
    header = json.loads(proc.stdout.readline() or '{"unavailable": "worker died while starting"}')
    if "unavailable" in header:
        proc.wait(timeout=60)
        return None, header["unavailable"]
    return proc, header["steps"]


def request(proc, command: str = "chunk") -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"benchmark worker died; its log: {getattr(proc, 'log_path', '?')}")
    return json.loads(line)


def run_workload(kind: str, rounds: int, contenders: list[str], quick: bool = False) -> dict:
    started = {c: start(c, kind, quick) for c in contenders}
    started = {c: ready(proc) for c, proc in started.items()}
    procs = {c: p for c, (p, _) in started.items() if p is not None}
    unavailable = {c: why for c, (p, why) in started.items() if p is None}
    names = list(procs)
    samples = {c: [] for c in names}
    try:
        for r in range(1 + rounds):
            for c in names if r % 2 == 0 else names[::-1]:
                result = request(procs[c])
                if r:
                    samples[c].append(result)
        checks = {c: request(procs[c], "check") for c in names}
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=120)
    bares = [c for c in names if c.startswith("bare")]
    fastest = max(bares, key=lambda c: statistics.median(1 / s["cpu"] for s in samples[c]))
    reference = checks[fastest]
    spec = QUICK_WORKLOAD if quick else WORKLOADS[kind]
    out = {"_fastest_bare": fastest, "_unavailable": unavailable, "_spec": spec}
    for c in names:
        steps = started[c][1]
        check = checks[c]
        loss_ok = abs(check["loss"] - reference["loss"]) <= LOSS_RTOL * abs(reference["loss"])
        out[c] = {
            "steps_per_cpu_s": statistics.median(steps / s["cpu"] for s in samples[c]),
            "steps_per_wall_s": statistics.median(steps / s["wall"] for s in samples[c]),
            "cpu_ratio_to_bare": statistics.median(b["cpu"] / s["cpu"] for b, s in zip(samples[fastest], samples[c])),
            "wall_ratio_to_bare": statistics.median(b["wall"] / s["wall"] for b, s in zip(samples[fastest], samples[c])),
            "peak_rss_mb": samples[c][-1]["rss_mb"],
            "traces": samples[c][-1]["traces"],
            "optimizer_steps": check["optimizer_steps"],
            "final_loss": check["loss"],
            "work_ok": check["optimizer_steps"] == reference["optimizer_steps"] and loss_ok,
            "cpu_per_round": [s["cpu"] for s in samples[c]],
        }  # fmt: skip
    return out


def targets(rows: dict) -> dict:
    """fit_default's ratios to the fastest bare loop, the best Keras fit and Orbit (CPU time)."""
    fit = rows["fit_default"]["cpu_ratio_to_bare"]
    keras_rows = [rows[c]["cpu_ratio_to_bare"] for c in KERAS if c in rows]
    out = {"fit_default/bare": fit}
    if keras_rows:
        out["fit_default/best_keras"] = fit / max(keras_rows)
    if "orbit" in rows:
        out["fit_default/orbit"] = fit / rows["orbit"]["cpu_ratio_to_bare"]
    return out


def split(rounds: int) -> dict:
    """Where fit_default's CPU time goes, in one process, against bare_chunk's in the same rounds (MLP).

    Wraps the controller's parts with CPU timers: the compiled train calls (per step: the
    loop body; per call: TensorFlow's call), the log points (means, metrics.jsonl,
    TensorBoard, progress), the checkpoints (open, saves, the final wait) and the rest of
    fit() (epoch starts, iterators, hooks). Milliseconds per chunk, medians over rounds.
    Orbax writes in background threads, whose CPU lands in whatever part is running then.
    """
    import collections

    from framework.checkpointing import checkpoint

    spec = WORKLOADS["mlp"]
    fit, bare = _Contender("fit_default", "mlp", spec), _Contender("bare_chunk", "mlp", spec)
    ctl = fit.trainer.controller
    parts = collections.defaultdict(float)

    def timed(owner, attr: str, label: str) -> None:
        inner = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            start = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                parts[label] += time.process_time() - start

        setattr(owner, attr, wrapper)

    fit.chunk(), bare.chunk()  # warm-up
    timed(ctl, "_call", "train calls")
    timed(ctl, "_log_point", "log points")
    for attr in ("save", "close", "__init__"):
        timed(checkpoint.Checkpoints, attr, "checkpoints")
    rows = collections.defaultdict(list)
    for _ in range(rounds):
        parts.clear()
        start = time.process_time()
        fit.chunk()
        rows["fit_default"].append(time.process_time() - start)
        for label in ("train calls", "log points", "checkpoints"):
            rows[label].append(parts[label])
        rows["rest of fit()"].append(rows["fit_default"][-1] - sum(parts.values()))
        start = time.process_time()
        bare.chunk()
        rows["bare_chunk"].append(time.process_time() - start)
    steps = fit.steps_per_epoch * fit.epochs
    out = {k: statistics.median(v) * 1e3 for k, v in rows.items()}
    print(
        f"\nWhere fit_default's CPU time goes (MLP, {steps} steps a chunk, ms per chunk, medians of {rounds}):\n"
    )
    print("| part | ms per chunk | share of fit_default | µs per step |")
    print("|---|---|---|---|")
    for k, v in out.items():
        print(f"| {k} | {v:.1f} | {v / out['fit_default']:.1%} | {v / steps * 1e3:.1f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("CONTENDER", "WORKLOAD"))
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds of the MLP (the real models: 3)")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny MLP, 2 rounds, 5 contenders (for the tests)"
    )
    parser.add_argument("--only", help="comma-separated workloads: mlp,resnet,lm")
    parser.add_argument("--contenders", help="comma-separated contenders (default: all)")
    parser.add_argument("--json", help="write results here")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--split", action="store_true", help="only: where fit_default's time goes (MLP)")
    args = parser.parse_args()
    if args.split:
        sys.path.insert(0, ROOT)
        split(args.rounds)
        return
    if args.worker:
        worker(args.worker[0], args.worker[1], args.quick)
        return
    kinds = args.only.split(",") if args.only else list(WORKLOADS)
    contenders = args.contenders.split(",") if args.contenders else CONTENDERS
    if args.quick:
        kinds, contenders = ["mlp"], QUICK_CONTENDERS
    results = {}
    for kind in kinds:
        rounds = 2 if args.quick else (args.rounds if kind == "mlp" else max(3, args.rounds // 2))
        start = time.perf_counter()
        results[kind] = run_workload(kind, rounds, contenders, args.quick)
        results[kind]["_targets"] = targets(results[kind])
        _print(kind, results[kind], args.markdown, time.perf_counter() - start)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def _print(kind: str, rows: dict, markdown: bool, seconds: float) -> None:
    spec = rows["_spec"]
    print(f"\n### {kind}: batch {spec['batch']}, {spec['rows'] // spec['batch']} steps an epoch, "
          f"{spec['epochs_per_chunk']} epoch(s) a chunk; {seconds:.0f} s\n")  # fmt: skip
    print("| contender | steps/CPU-s | steps/wall-s | × fastest bare (CPU) | × fastest bare (wall) | traces "
          "| peak RSS MB | optimizer steps | final loss | work check |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, r in rows.items():
        if c.startswith("_"):
            continue
        print(f"| {c} | {r['steps_per_cpu_s']:.3g} | {r['steps_per_wall_s']:.3g} | {r['cpu_ratio_to_bare']:.3f} "
              f"| {r['wall_ratio_to_bare']:.3f} | {r['traces']} | {r['peak_rss_mb']:.0f} | {r['optimizer_steps']} "
              f"| {r['final_loss']:.6f} | {'ok' if r['work_ok'] else 'DIFFERS'} |")  # fmt: skip
    for c, why in rows["_unavailable"].items():
        print(f"| {c} | not run: {why} |")
    print(f"\nfastest bare loop: {rows['_fastest_bare']}; targets (CPU): "
          + ", ".join(f"{k} = {v:.3f}" for k, v in rows["_targets"].items()))  # fmt: skip


if __name__ == "__main__":
    main()
