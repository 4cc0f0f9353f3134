"""The command line as the README writes it: train.sh's flags, free sections, step runs, eval, sweeps.

The README's own lines run at smoke size through `framework.run` in this process, as
`python experiments/digits.py ...` would run them (a process would add only TensorFlow's
start-up); so do the command lines refused before training (exit code 2, one FATAL line)
and the sweep command, whose runs are processes of their own. What a real process logs at
absl's default verbosity (the step-run note) is checked in a subprocess.
"""

import functools
import glob
import importlib.util
import json
import logging
import os
import re
import shlex
import sys

import keras
import pytest
import tensorflow as tf
from absl import flags
from script_runs import ROOT, run_script

import framework
from framework.outputs import run_log
from framework.sweeps import sweep_command

from toys import ArrayTrainer, ExampleCount, blobs, config, mlp


def readme_command(pattern: str) -> list[str]:
    """The first command line of README.md, then docs/, matching `pattern` (a regex), split into words."""
    pages = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
    for page in pages:
        with open(page) as f:
            match = re.search(pattern, f.read())
        if match:
            return shlex.split(match.group(0))
    raise AssertionError(f"No command line matching {pattern!r} in README.md or docs/")


def train_sh_argv(*user_args: str) -> list[str]:
    """The python command scripts/train.sh execs with `user_args` (not train.sh: it may install packages)."""
    with open(os.path.join(ROOT, "scripts", "train.sh")) as f:
        line = next(line for line in f if line.startswith("exec python "))
    words = shlex.split(line)[2:]  # after "exec python"
    return [w for w in words if w != "$@"] + list(user_args)


def records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def fatal_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("FATAL")]


def run_digits_in_process(capsys, *args: str) -> tuple[int, str]:
    """`python experiments/digits.py *args` run by `framework.run` in this process: (exit code, stderr)."""
    code, _, err = run_digits(capsys, *args)
    return code, err


def run_digits(capsys, *args: str) -> tuple[int, str, str]:
    """`python experiments/digits.py *args` run by `framework.run` in this process: (exit code, stdout, stderr).

    `capsys` None: nothing is captured (a module-scoped fixture); stdout and stderr come back empty.

    A process would add only TensorFlow's start-up: `framework.run` parses the same argv with
    absl and runs the same mode (digits.py's `__main__` calls just that). An exception other
    than SystemExit (a traceback in the shell) propagates and fails the test.
    """
    digits = _experiment_module("digits")
    argv = [os.path.join(ROOT, "experiments", "digits.py")]
    argv += [a.replace("=configs/", f"={ROOT}/configs/") for a in args]
    if capsys is not None:
        capsys.readouterr()
    try:
        framework.run(digits.DigitsTrainer, argv)
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        flags.FLAGS.unparse_flags()
    return (code, *capsys.readouterr()) if capsys is not None else (code, "", "")


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's first flag example, `scripts/train.sh --config=configs/digits.py:smoke --config.batch_size=128`."""
    words = readme_command(r"scripts/train\.sh --config=\S+ --config\.batch_size=\d+")
    assert words[0] == "scripts/train.sh"
    workdir = tmp_path_factory.mktemp("readme") / "digits"
    argv = train_sh_argv(*words[1:], f"--workdir={workdir}")
    assert argv[0] == "experiments/digits.py", argv
    code, _, _ = run_digits(None, *argv[1:])
    return workdir, code


def test_train_sh_flags_replace_its_default_config_and_override_keys(readme_run):
    workdir, code = readme_run
    assert code == 0
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["batch_size"] == 128  # the override
    assert recorded["epochs"] == 3  # configs/digits.py:smoke's, not train.sh's default configs/digits.py (30)
    assert [r["epoch"] for r in records(workdir) if r["kind"] == "epoch"] == [1, 2, 3]


def test_eval_best_without_a_best_metric_is_one_fatal_line_naming_the_logged_keys(readme_run, capsys):
    workdir, _ = readme_run
    words = readme_command(r"python experiments/digits\.py \S+ --workdir=\S+ --mode=eval --checkpoint=best")
    assert words[1] == "experiments/digits.py"
    code, stderr = run_digits_in_process(
        capsys, *[w for w in words[2:] if not w.startswith("--workdir")], f"--workdir={workdir}"
    )
    assert code == 2, stderr[-3000:]
    (line,) = fatal_lines(stderr)
    logged = sorted({k for r in records(workdir) for k in r if k.startswith("val/")})
    assert logged and all(key in line for key in logged), line
    assert "--config.checkpoint.best_metric=val/accuracy" in line and "--checkpoint=<step>" in line


def test_optimizer_options_take_new_keys_from_the_command_line(tmp_path, capsys):
    code, _, stderr = run_digits(
        capsys, "--config=configs/digits.py:smoke", f"--workdir={tmp_path / 'run'}",
        "--mode=train", "--config.epochs=1", "--config.optimizer.name=sgd",
        "--config.optimizer.options.momentum=0.9", "--config.optimizer.options.nesterov=true",
    )  # fmt: skip
    assert code == 0, stderr[-3000:]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["optimizer"]["options"] == {"momentum": 0.9, "nesterov": True}

    # A wrong argument name reaches the optimizer, which refuses it: one line naming both, before training.
    code, stderr = run_digits_in_process(
        capsys, "--config=configs/digits.py:smoke", f"--workdir={tmp_path / 'typo'}",
        "--config.optimizer.name=sgd", "--config.optimizer.options.momentun=0.9",
    )  # fmt: skip
    assert code == 2, stderr[-3000:]
    (line,) = fatal_lines(stderr)
    assert "'sgd'" in line and "momentun" in line, line
    assert not (tmp_path / "typo" / "checkpoints").exists()

    # Elsewhere an unknown key still fails, naming it: nothing else checks the names of model keys.
    for key, where in (("optimizer.momentum", "config.optimizer"), ("model.hiden", "config.model")):
        code, stderr = run_digits_in_process(
            capsys, "--config=configs/digits.py:smoke", f"--workdir={tmp_path / 'x'}", f"--config.{key}=1"
        )
        assert code == 2, stderr[-3000:]
        (line,) = fatal_lines(stderr)
        leaf = key.split(".")[-1]
        assert line.startswith(f"FATAL --config.{key}: {where} has no key '{leaf}'."), line


def test_train_steps_alone_makes_an_epoch_config_step_based(tmp_path):
    workdir = tmp_path / "run"
    result = run_script(
        "experiments/digits.py", "--config=configs/digits.py", f"--workdir={workdir}",
        "--config.train_steps=3", "--mode=train",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if "config.epochs=30 is unused" in line]
    assert len(said) == 1, result.stderr[-3000:]
    assert max(r["step"] for r in records(workdir)) == 3
    assert "steps: 3/3" in result.stdout


def get_blobs_config():
    return config(epochs=2, log_every_steps=2, **{"checkpoint.best_metric": "val/accuracy"})


def test_framework_run_returns_the_history_the_results_and_the_export_path(tmp_path):
    trainer_cls = functools.partial(
        ArrayTrainer, data=blobs(n=64), eval_data=blobs(n=32, seed=3), model_fn=mlp,
        metrics=lambda: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )  # fmt: skip
    argv = ["blobs.py", f"--workdir={tmp_path}"]
    try:
        history = framework.run(trainer_cls, argv, get_config=get_blobs_config)
        epochs = [r for r in records(tmp_path) if r["kind"] == "epoch"]
        assert len(history) == 2
        for returned, logged in zip(history, epochs):
            assert set(returned) == set(logged) - {"kind", "step", "epoch", "time"}
            assert returned == pytest.approx({k: logged[k] for k in returned})
        results = framework.run(
            trainer_cls, [*argv, "--mode=eval", "--checkpoint=best"], get_config=get_blobs_config
        )
        best = max(epochs, key=lambda r: (r["val/accuracy"], r["step"]))
        assert {f"val/{k}": v for k, v in results.items()} == pytest.approx(
            {k: v for k, v in best.items() if k.startswith("val/")}
        )
        path = framework.run(trainer_cls, [*argv, "--mode=export"], get_config=get_blobs_config)
        assert path == os.path.join(str(tmp_path), "export", str(epochs[-1]["step"]))
        assert os.path.exists(os.path.join(path, "saved_model.pb"))
    finally:
        flags.FLAGS.unparse_flags()


def test_limit_train_steps_caps_the_runs_total_steps():
    trainer = ArrayTrainer(
        config(epochs=3, **{"debug.limit_train_steps": 8}), data=blobs(n=96), model_fn=mlp,
        metrics=lambda: [ExampleCount()],
    )  # fmt: skip
    history = trainer.fit()  # 6 batches of 16 per epoch: one full epoch, then 2 steps
    assert trainer.step == 8 and int(trainer.optimizer.iterations) == 8
    assert [h["count"] for h in history] == [96, 32]


def test_the_period_line_shows_every_validation_value(caplog):
    heads = ("digit", "parity")
    train = {"loss": 1.0, **{f"loss/{h}": 0.5 for h in heads}, "lr": 0.1}
    train.update({f"{h}/{m}": 0.25 for h in heads for m in ("accuracy", "auc", "precision", "recall")})
    val = {
        f"val/{h}/{m}": 0.125 + i for i, (h, m) in enumerate((h, m) for h in heads for m in ("a", "b", "c"))
    }
    val.update({"val/loss": 2.0, "val/loss/raw": 3.0})
    progress = run_log.Progress(interactive=False)
    with caplog.at_level(logging.INFO, logger="absl"):
        progress.start_epoch(1, 1, 10)
        progress.end_epoch({**train, **val})
        progress.start_epoch(1, 1, 10, first_step=0, total_steps=10)
        progress.end_epoch({**train, **val})
    lines = [r.getMessage() for r in caplog.records if "done in" in r.getMessage()]
    assert len(lines) == 2
    for line in lines:
        for key, value in val.items():
            if "/raw" not in key:
                assert f"{key}={value:.4g}" in line, (key, line)
        assert "loss=1 " in line  # the train values come first


SWEEP_SCRIPT = """
import keras
import numpy as np
import tensorflow as tf

import framework
from framework import losses


def get_config():
    config = framework.config.defaults()
    config.epochs = 1
    config.batch_size = 50
    config.model.hidden = 4
    return config


def get_sweep(arg=None):
    return framework.config.product({"model.hidden": [3, 5]})


class Blobs(framework.Trainer):
    def build_model(self):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(self.config.model.hidden), keras.layers.Dense(3)])

    def build_loss(self):
        return losses.Term(keras.losses.SparseCategoricalCrossentropy(from_logits=True), name="ce")

    def build_train_dataset(self, input_context):
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 100).astype("int32")
        x = (rng.normal(0, 1, (100, 4)) + y[:, None]).astype("float32")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(input_context.get_per_replica_batch_size(50))


if __name__ == "__main__":
    framework.run(Blobs)
"""


def test_a_one_file_script_sweeps_its_own_get_sweep_without_config(tmp_path, capsys):
    """The sweep command runs here (`scripts/sweep.py` calls just its main); its runs are processes."""
    script = tmp_path / "blobs.py"
    script.write_text(SWEEP_SCRIPT)
    workdir = tmp_path / "sweep"
    code = sweep_command.main([str(script), f"--workdir={workdir}", "--mode=train"])
    out, err = capsys.readouterr()
    assert code == 0, out[-2000:] + err[-2000:]
    for hidden in (3, 5):
        run = workdir / f"hidden={hidden}"
        assert json.loads((run / "sweep.json").read_text())["status"] == "done"
        recorded = json.loads((run / "config.json").read_text())
        assert recorded["model"]["hidden"] == hidden and recorded["epochs"] == 1
        assert "--config=" not in (run / "run.log").read_text().splitlines()[0]  # the script's own config
    assert (workdir / "summary.md").exists()


def _experiment_module(name):
    """experiments/<name>.py, imported (experiments/ is not a package; its modules import `common`)."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(os.path.join(ROOT, "experiments"))


def _images_config(variant):
    spec = importlib.util.spec_from_file_location("images_config", os.path.join(ROOT, "configs", "images.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def test_the_images_smoke_variant_writes_its_data_on_first_use(tmp_path):
    images = _experiment_module("images")
    cfg = _images_config("smoke")
    cfg.data.dir = str(tmp_path / "data" / "images_smoke")
    trainer = images.ImagesTrainer(cfg, None, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    x, y = next(iter(trainer.build_train_dataset(tf.distribute.InputContext())))
    assert x.shape == (64, 32, 32, 3) and y.shape == (64,)
    written = {os.path.basename(p) for p in glob.glob(os.path.join(cfg.data.dir, "*"))}
    assert written == {f"train-0000{i}-of-00004.tfrecord" for i in range(4)} | {
        "eval-00000-of-00001.tfrecord"
    }
    count = sum(1 for _ in tf.data.TFRecordDataset(sorted(glob.glob(os.path.join(cfg.data.dir, "train-*")))))
    assert count == 2000
    assert not glob.glob(str(tmp_path / "data" / "*.tmp-*"))

    full = _images_config("")
    full.data.dir = str(tmp_path / "full")
    trainer = images.ImagesTrainer(full, None, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    command = f"python scripts/make_images.py --out {full.data.dir} --train 20000 --eval 4000 --shards 16"
    with pytest.raises(FileNotFoundError, match=re.escape(command)):
        trainer.build_train_dataset(tf.distribute.InputContext())
