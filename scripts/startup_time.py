"""Time to first step: imports, building a trainer, and the whole digits:smoke process against plain Keras.

    python scripts/startup_time.py [--rounds 5] [--roots NEW_CHECKOUT OLD_CHECKOUT ...]

Each contestant is a fresh Python process; the contestants run one after the
other in interleaved rounds (order reversed every other round), so a slow phase
of a shared machine hits all of them. Printed per contestant: the medians of the
process's CPU time (user + system, all threads) and wall time.

  import framework   `python -c "import framework"`
  framework.Trainer  `import framework; framework.Trainer` (TensorFlow and Keras with it)
  import keras       the floor of the two above
  build Trainer      `DigitsTrainer(configs/digits.py:smoke)` with no workdir, built in the process
  digits:smoke       `python experiments/digits.py --config=configs/digits.py:smoke --workdir=<tmp>`
                     (3 epochs of 23 steps, an evaluation, a checkpoint and TensorBoard per epoch)
  keras digits       the same model, loss (cross-entropy + L2 on the kernels), Adam, batches, epochs
                     and evaluations with Keras `fit` in a plain script, no checkpoints

With several --roots, each checkout's framework contestants run with that checkout
first on PYTHONPATH (an A/B of two versions).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KERAS_DIGITS = """
import sys
sys.path.insert(0, "experiments")
import keras
from common import digits_split
x_train, x_eval, y_train, y_eval = digits_split(0.2, 0)
keras.utils.set_random_seed(0)
l2 = keras.regularizers.L2(1e-4)  # framework.losses.L2: rate * sum(w**2) over the kernels
model = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(128, activation="relu", kernel_regularizer=l2),
    keras.layers.Dropout(0.1),
    keras.layers.Dense(10, kernel_regularizer=l2),
])
model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=64, epochs=3, validation_data=(x_eval, y_eval), verbose=0)
"""

BUILD_TRAINER = """
import sys
sys.path[:0] = ["experiments", "."]
from configs.digits import get_config
from digits import DigitsTrainer
DigitsTrainer(get_config("smoke"))
"""


def _contestants(roots: list[str]) -> dict[str, tuple[list[str], str]]:
    python = sys.executable
    out = {"import keras": ([python, "-c", "import keras"], HERE)}
    for root in roots:
        tag = "" if len(roots) == 1 else f" [{os.path.basename(root.rstrip('/'))}]"
        out[f"import framework{tag}"] = ([python, "-c", "import framework"], root)
        out[f"framework.Trainer{tag}"] = ([python, "-c", "import framework; framework.Trainer"], root)
        out[f"build Trainer{tag}"] = ([python, "-c", BUILD_TRAINER], root)
        digits = [python, "experiments/digits.py", "--config=configs/digits.py:smoke"]
        out[f"digits:smoke{tag}"] = (digits, root)
    out["keras digits"] = ([python, "-c", KERAS_DIGITS], HERE)
    return out


def _run(args: list[str], root: str) -> tuple[float, float]:
    """CPU seconds (user + system of the child) and wall seconds of one process."""
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as workdir:
        if args[1] == "experiments/digits.py":
            args = [*args, f"--workdir={workdir}"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            args, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--roots", nargs="+", default=[HERE])
    args = parser.parse_args()
    contestants = _contestants([os.path.abspath(r) for r in args.roots])
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in contestants}
    for r in range(args.rounds):
        order = list(contestants) if r % 2 == 0 else list(reversed(contestants))
        for name in order:
            samples[name].append(_run(*contestants[name]))
        print(f"round {r + 1}/{args.rounds} done; load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    print(f"| process | CPU s (median of {args.rounds}) | wall s | CPU range |")
    print("|---|---|---|---|")
    for name, s in samples.items():
        cpu, wall = [c for c, _ in s], [w for _, w in s]
        print(
            f"| {name} | {statistics.median(cpu):.2f} | {statistics.median(wall):.2f} "
            f"| {min(cpu):.2f}-{max(cpu):.2f} |"
        )


if __name__ == "__main__":
    main()
