"""Sweeps end to end: scripts/sweep.py over digits smoke runs, HParams, compare_runs, Optuna search."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from timeouts import seconds

from framework import config as config_lib
from framework.config import command_line
from framework.sweeps import processes as sweeps
from framework.sweeps import pruning

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP_CONFIG = """
from configs.digits import get_config as digits_config
from framework.config import choice, product


def get_config(arg=None):
    config = digits_config("smoke")
    config.epochs = 2
    return config


def get_sweep(arg=None):
    if arg == "search":
        return {"optimizer.learning_rate": choice([1e-2, 1e-5])}
    if arg == "typo":
        return [{"optimizer.learning_rat": 1e-3}]
    grid = product({"optimizer.learning_rate": [3e-3]}, {"seed": [0, 1]}) + [{"optimizer.learning_rate": 1e-2}]
    return grid + [{"model.dropout": 1.5}]  # Dropout rejects rate >= 1 when the model is built
"""


def run_script(script, *args, timeout=900):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        capture_output=True, text=True, timeout=seconds(timeout), cwd=ROOT, env=env,
    )  # fmt: skip


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def last_eval(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if r["kind"] == "eval"][-1], max(r["step"] for r in records)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 4-point digits sweep (2 epochs each), one point failing in build_model."""
    tmp = tmp_path_factory.mktemp("sweep")
    config = tmp / "sweep_config.py"
    config.write_text(SWEEP_CONFIG)
    workdir = tmp / "runs"
    args = ("experiments/digits.py", f"--config={config}", f"--workdir={workdir}", "--parallel=2")
    result = run_script("scripts/sweep.py", *args, "--monitor=val/accuracy")
    return workdir, args, result


@pytest.mark.slow
def test_sweep_summary_lists_done_runs_and_the_failed_one_with_its_log(sweep):
    workdir, _, result = sweep
    assert result.returncode == 1, result.stderr[-3000:]  # a failed run: nonzero, after the others
    rows = {row["run"]: row for row in read_csv(workdir / "summary.csv")}
    assert set(rows) == {
        "learning_rate=0.003,seed=0", "learning_rate=0.003,seed=1", "learning_rate=0.01", "dropout=1.5",
    }  # fmt: skip
    assert [rows[name]["status"] for name in sorted(rows)] == ["failed", "done", "done", "done"]
    failed = rows["dropout=1.5"]
    assert failed["log"].endswith(os.path.join("dropout=1.5", "run.log"))
    assert "dropout" in (workdir / "dropout=1.5" / "run.log").read_text().lower()
    assert f"FAILED dropout=1.5: see {workdir / 'dropout=1.5' / 'run.log'}" in result.stdout
    for name in ("learning_rate=0.003,seed=0", "learning_rate=0.003,seed=1", "learning_rate=0.01"):
        final, steps = last_eval(workdir / name)
        assert int(rows[name]["steps"]) == steps == 46  # 2 epochs of ceil(1437 / 64) batches
        assert float(rows[name]["val/accuracy"]) == pytest.approx(final["val/accuracy"], rel=1e-9)
        assert float(rows[name]["best val/accuracy"]) >= float(rows[name]["val/accuracy"])
        config = json.loads((workdir / name / "config.json").read_text())
        assert config["optimizer"]["learning_rate"] == float(rows[name]["optimizer.learning_rate"])
    seeds = [last_eval(workdir / f"learning_rate=0.003,seed={s}")[0]["val/accuracy"] for s in (0, 1)]
    point = next(
        r for r in read_csv(workdir / "summary_points.csv") if r["optimizer.learning_rate"] == "0.003"
    )
    assert point["runs"] == "2/2"
    assert float(point["val/accuracy mean"]) == pytest.approx(np.mean(seeds))
    assert float(point["val/accuracy std"]) == pytest.approx(np.std(seeds, ddof=1))
    summary = (workdir / "summary.md").read_text()
    assert "Mean ± std over seeds" in summary and "| dropout=1.5 |" in summary


@pytest.mark.slow
def test_hparams_sessions_and_the_experiment_read_back_with_tensorboard(sweep):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    workdir, _, _ = sweep

    def hparams_content(path, tag):
        acc = event_accumulator.EventAccumulator(str(path))
        acc.Reload()
        return plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")[tag])

    session = hparams_content(workdir / "learning_rate=0.003,seed=1", "_hparams_/session_start_info")
    values = session.session_start_info.hparams
    assert values["optimizer.learning_rate"].number_value == pytest.approx(3e-3)
    assert values["seed"].number_value == 1
    assert values["optimizer.name"].string_value == "adam"
    experiment = hparams_content(workdir, "_hparams_/experiment").experiment
    names = [info.name for info in experiment.hparam_infos]
    assert {"optimizer.learning_rate", "seed", "model.dropout"} <= set(names)
    metrics = {(m.name.group, m.name.tag): m.display_name for m in experiment.metric_infos}
    assert metrics[("eval", "accuracy")] == "val/accuracy"
    acc = event_accumulator.EventAccumulator(str(workdir / "learning_rate=0.003,seed=1" / "eval"))
    acc.Reload()
    assert "accuracy" in acc.Tags()["tensors"]  # the metric the HParams dashboard reads


@pytest.mark.slow
def test_compare_runs_prints_the_table_and_writes_the_overlay_png(sweep, tmp_path):
    workdir, _, _ = sweep
    runs = [str(workdir / "learning_rate=0.003,seed=0"), str(workdir / "learning_rate=0.01")]
    png = tmp_path / "compare.png"
    result = run_script("scripts/compare_runs.py", *runs, "--out", str(png), "--monitor=val/accuracy")
    assert result.returncode == 0, result.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    final, _ = last_eval(runs[1])
    row = next(line for line in result.stdout.splitlines() if "learning_rate=0.01 |" in line)
    assert f"{final['val/accuracy']:.4g}" in row


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_resumes_interrupted_ones(sweep):
    workdir, args, _ = sweep
    interrupted = sweeps.Run("learning_rate=0.01", {}, str(workdir / "learning_rate=0.01"))
    interrupted.save_state(status="running")  # as a killed sweep leaves it
    done = workdir / "learning_rate=0.003,seed=0" / "metrics.jsonl"
    before = done.read_bytes()
    records_before = len((workdir / "learning_rate=0.01" / "metrics.jsonl").read_text().splitlines())
    result = run_script("scripts/sweep.py", *args, "--monitor=val/accuracy")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "[skip] learning_rate=0.003,seed=0: done" in result.stdout
    assert "[skip] learning_rate=0.003,seed=1: done" in result.stdout
    assert done.read_bytes() == before
    state = interrupted.state()
    assert state["status"] == "done" and state["attempts"] == 2
    lines = (workdir / "learning_rate=0.01" / "metrics.jsonl").read_text().splitlines()
    assert not [json.loads(line) for line in lines[records_before:] if json.loads(line)["kind"] == "train"]
    failed = sweeps.Run("dropout=1.5", {}, str(workdir / "dropout=1.5")).state()
    assert failed["status"] == "failed" and failed["attempts"] == 2


def test_a_misspelt_sweep_key_fails_before_any_run_naming_it(tmp_path):
    config_file = tmp_path / "sweep_config.py"
    config_file.write_text(SWEEP_CONFIG)
    config, points = sweeps.load(f"{config_file}:typo")
    with pytest.raises(config_lib.ConfigError, match=r"sweep point 0.*'learning_rat'.*'learning_rate'"):
        command_line.apply_overrides(config, points[0], "sweep point 0")
    with pytest.raises(config_lib.ConfigError, match=r"config.seed=0.5 has the wrong type"):
        command_line.apply_overrides(config, {"seed": 0.5}, "sweep point 0")
    with pytest.raises(config_lib.ConfigError, match=r"config.batch_size=0 must be an integer >= 1"):
        command_line.apply_overrides(config, {"batch_size": 0}, "sweep point 0")


def test_product_and_zipped_build_override_lists():
    points = config_lib.product(
        config_lib.zipped({"optimizer.learning_rate": [1e-3, 1e-2], "optimizer.warmup_steps": [0, 10]}),
        {"seed": range(2)},
    )
    assert points == [
        {"optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 0, "seed": 0},
        {"optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 0, "seed": 1},
        {"optimizer.learning_rate": 1e-2, "optimizer.warmup_steps": 10, "seed": 0},
        {"optimizer.learning_rate": 1e-2, "optimizer.warmup_steps": 10, "seed": 1},
    ]
    assert sweeps.run_names(points)[0] == "learning_rate=0.001,warmup_steps=0,seed=0"
    with pytest.raises(config_lib.ConfigError, match="'seed' is set by two parts"):
        config_lib.product({"seed": [0]}, {"seed": [1]})
    with pytest.raises(config_lib.ConfigError, match="every key needs as many values"):
        config_lib.zipped({"a": [1, 2], "b": [3]})
    with pytest.raises(config_lib.ConfigError, match="'optimizer.name' needs a list of values"):
        config_lib.product({"optimizer.name": "adam"})
    with pytest.raises(config_lib.ConfigError, match="the same point"):
        sweeps.run_names([{"seed": 0}, {"seed": 0}])


def test_search_without_optuna_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` meets when it is absent
    with pytest.raises(config_lib.ConfigError, match="pip install optuna"):
        pruning.import_optuna()


@pytest.mark.slow
def test_optuna_search_prunes_a_trial_below_the_median(tmp_path):
    optuna = pytest.importorskip("optuna")
    config = tmp_path / "sweep_config.py"
    config.write_text(SWEEP_CONFIG)
    workdir = tmp_path / "search"
    # TPE's first trials are random; with seed 0 they draw lr 1e-5, 1e-2, 1e-5: the third is pruned
    # at its first evaluation, below the median of the two completed trials.
    result = run_script(
        "scripts/sweep.py", "experiments/digits.py", f"--config={config}", "--sweep=search",
        f"--workdir={workdir}", "--search=optuna", "--trials=3", "--pruner_startup_trials=1",
        "--monitor=val/accuracy", "--seed=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name=pruning.STUDY, storage=pruning.storage(str(workdir)))
    trials = study.get_trials()
    rates = [t.params["optimizer.learning_rate"] for t in trials]
    assert rates == [1e-5, 1e-2, 1e-5]
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert list(trials[2].intermediate_values) == [0]  # reported once, at the first evaluation
    assert trials[2].intermediate_values[0] < np.median(
        [trials[0].intermediate_values[0], trials[1].intermediate_values[0]]
    )
    assert trials[1].value == pytest.approx(last_eval(workdir / "trial-001")[0]["val/accuracy"])
    _, pruned_steps = last_eval(workdir / "trial-002")
    assert pruned_steps == 23  # stopped after 1 of 2 epochs
    rows = {row["run"]: row for row in read_csv(workdir / "summary.csv")}
    assert [rows[f"trial-00{i}"]["status"] for i in range(3)] == ["done", "done", "pruned"]


def test_optuna_pruning_callback_in_a_hand_written_objective():
    optuna = pytest.importorskip("optuna")
    import keras

    import toys

    def objective(trial):
        cfg = toys.config(
            epochs=4, eval_every_epochs=2, **{"optimizer.learning_rate": trial.suggest_float("lr", 1e-6, 1.0)}
        )
        trainer = toys.ArrayTrainer(
            cfg, data=toys.blobs(), eval_data=toys.blobs(seed=1), model_fn=toys.mlp,
            metrics=lambda: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )  # fmt: skip
        pruning_cb = pruning.OptunaPruning(trial, "val/accuracy")
        history = trainer.fit(callbacks=[pruning_cb])
        trial.set_user_attr("history", [h.get("val/accuracy") for h in history])
        if pruning_cb.pruned:
            raise optuna.TrialPruned()
        return history[-1]["val/accuracy"]

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    study.enqueue_trial({"lr": 0.3})
    study.enqueue_trial({"lr": 1e-6})  # learns nothing: below the first trial at its first evaluation
    study.optimize(objective, n_trials=2)
    good, bad = study.trials
    assert good.state.name == "COMPLETE" and bad.state.name == "PRUNED"
    assert good.user_attrs["history"][0] is None  # no evaluation after epoch 1: nothing reported
    assert good.intermediate_values == {1: good.user_attrs["history"][1], 3: good.user_attrs["history"][3]}
    assert bad.user_attrs["history"] == [None, bad.intermediate_values[1]]  # stopped after 2 of 4 epochs


def test_without_tensorboard_runs_write_no_hparams_and_do_not_fail(monkeypatch, tmp_path):
    from framework.outputs import hparams

    monkeypatch.setitem(sys.modules, "tensorboard.plugins.hparams", None)  # as if not installed
    config = config_lib.defaults()
    assert not hparams.write_session(str(tmp_path), config, ["optimizer.learning_rate"])
    assert not hparams.write_experiment(str(tmp_path), [{"seed": 0}], ["val/accuracy"])
    assert list(tmp_path.iterdir()) == []
    assert hparams.hparams_of(config, ["model.missing"])["optimizer.learning_rate"] == 1e-3
