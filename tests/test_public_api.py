"""The public API, pinned: its names and the signatures users call.

Oracle: the lists below, written by hand from the documented API (README, docs/, experiments/,
configs/). A change to a public name or signature fails here with a diff; if it is intended,
update the list and the docs in the same commit. Also: the TF-free parts import without TensorFlow
(checked in a fresh interpreter, where nothing else has imported it).
"""

import inspect
import os
import re
import subprocess
import sys

import pytest
from timeouts import seconds

import framework

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PUBLIC_NAMES = [
    "Periodic",
    "StepLoss",
    "Trainer",
    "Weighted",
    "config",
    "data",
    "distribute",
    "ema_weights",
    "losses",
    "metrics",
    "run",
]

# module.name -> the names users import from it (README, docs/, experiments/, configs/).
MODULE_NAMES = {
    "losses": [
        "BatchTerm",
        "Dice",
        "L1",
        "L2",
        "Loss",
        "LossResult",
        "ModelLosses",
        "NTXent",
        "PredictionTerm",
        "RankNet",
        "Regularizer",
        "Sum",
        "Term",
        "Triplet",
        "Tversky",
        "WeightedBinaryCrossentropy",
        "evaluate",
        "kernels",
        "with_layer_losses",
    ],
    "metrics": ["NDCG", "RecallAtK"],
    "config": [
        "ConfigError",
        "choice",
        "defaults",
        "integers",
        "load",
        "log_uniform",
        "parse_arg",
        "product",
        "uniform",
        "zipped",
    ],
    "data": ["DistributedInput", "global_shuffle", "shuffled_records"],
    "distribute": ["all_gather", "configure_cpu_devices", "global_batches", "mean_over_workers"],
}

SIGNATURES = {
    "Trainer.build_callbacks": "(self) -> 'list'",
    "Trainer.build_eval_dataset": "(self, input_context: 'tf.distribute.InputContext') -> 'tf.data.Dataset | None'",
    "Trainer.build_eval_metrics": "(self) -> 'list | dict | None'",
    "Trainer.build_loss": "(self) -> 'Loss | None'",
    "Trainer.build_metrics": "(self) -> 'list | dict'",
    "Trainer.build_model": "(self) -> 'keras.Model'",
    "Trainer.build_optimizer": "(self) -> 'keras.optimizers.Optimizer'",
    "Trainer.build_state": "(self, element_spec=None) -> 'None'",
    "Trainer.build_train_dataset": "(self, input_context: 'tf.distribute.InputContext') -> 'tf.data.Dataset'",
    "Trainer.train_step": "(self, batch) -> 'dict'",
    "Trainer.eval_step": "(self, batch) -> 'dict'",
    "Trainer.predict_step": "(self, batch)",
    "Trainer.compute_loss": "(self, y, y_pred, sample_weight=None, *, loss: 'Loss | None' = None, prefix: 'str' = '', model: 'keras.Model | None | type[_Default]' = <class 'framework.trainer.trainer._Default'>) -> 'StepLoss'",
    "Trainer.apply_gradients": "(self, tape: 'tf.GradientTape', loss: 'tf.Tensor', variables=None, optimizer=None) -> 'None'",
    "Trainer.update_metrics": "(self, y, y_pred, sample_weight=None) -> 'None'",
    "Trainer.add_optimizer": "(self, optimizer: 'keras.optimizers.Optimizer', variables, *, name: 'str | None' = None)",
    "Trainer.fit": "(self, *, validate: 'bool' = True, callbacks: 'list | None' = None) -> 'list[dict[str, float]]'",
    "Trainer.evaluate": "(self, dataset=None) -> 'dict[str, float]'",
    "Trainer.predict": "(self, dataset)",
    "Trainer.restore": "(self, which: 'str | int' = 'latest') -> 'int | None'",
    "Trainer.export": "(self, path: 'str | None' = None) -> 'str'",
    "Trainer.from_workdir": "(workdir: 'str', which: 'str | int' = 'latest', *, overrides=None, **kwargs)",
    "StepLoss": "(loss: ForwardRef('tf.Tensor'), logs: ForwardRef('dict[str, tf.Tensor]'))",
    "Periodic": "(fn: 'Callable', *, every_steps: 'int | None' = None, every_secs: 'float | None' = None, clock: 'Callable[[], float]' = <built-in function monotonic>)",
    "Weighted": "(value: ForwardRef('Any'), weight: ForwardRef('Any'))",
    "run": "(trainer_cls, argv: 'Sequence[str] | None' = None, *, get_config=None)",
    "ema_weights": "(optimizer: 'keras.optimizers.Optimizer')",
    "distribute.all_gather": "(value: 'tf.Tensor', axis: 'int' = 0, *, gradient: 'str' = 'own_slice') -> 'tf.Tensor'",
    "distribute.global_batches": "(dataset: 'tf.data.Dataset', input_context: 'tf.distribute.InputContext', global_batch_size: 'int', *, drop_remainder: 'bool' = False) -> 'tf.data.Dataset'",
    "distribute.mean_over_workers": "(strategy: 'tf.distribute.Strategy', values: 'list[float]') -> 'list[float]'",
    "distribute.configure_cpu_devices": "(count: 'int') -> 'list[str]'",
    "data.global_shuffle": "(dataset: 'tf.data.Dataset', seed: 'int', *, reshuffle_each_iteration: 'bool' = True) -> 'tf.data.Dataset'",
    "data.shuffled_records": "(files: 'str | Sequence[str]', seed: 'int', *, cycle_length: 'int' = 4, input_context: 'tf.distribute.InputContext | None' = None, compression_type: 'str | None' = None) -> 'tf.data.Dataset'",
    "data.DistributedInput": "(strategy: 'tf.distribute.Strategy', hook: 'Hook', name: 'str', *, steps_per_epoch: 'int' = 0, optional: 'bool' = False, limit: 'int' = 0, overfit_batches: 'int' = 0, cycle: 'bool' = False, read_on: 'bool' = False, pad_workers: 'bool' = False)",
    "config.defaults": "() -> 'ml_collections.ConfigDict'",
    "config.load": "(workdir: 'str') -> 'ml_collections.ConfigDict'",
    "config.product": "(*parts: 'Mapping[str, Iterable] | Sequence[Mapping[str, Any]]') -> 'list[dict[str, Any]]'",
    "config.zipped": "(axes: 'Mapping[str, Iterable]') -> 'list[dict[str, Any]]'",
    "config.parse_arg": "(arg: 'str | None', name: 'str' = 'config', /, **spec: 'Any') -> 'ml_collections.ConfigDict'",
    "config.choice": "(values: 'Iterable') -> 'Range'",
    "config.uniform": "(low: 'float', high: 'float', *, log: 'bool' = False) -> 'Range'",
    "config.log_uniform": "(low: 'float', high: 'float') -> 'Range'",
    "config.integers": "(low: 'int', high: 'int', *, log: 'bool' = False) -> 'Range'",
    "losses.BatchTerm": "(fn: 'Callable | keras.losses.Loss | None' = None, *, head: 'str | None' = None, weight: 'Weight' = 1.0, name: 'str | None' = None, mask_nan: 'bool' = False, reduction: 'str' = 'mean_with_sample_weight')",
    "losses.Dice": "(*, smooth: 'float' = 1.0, from_logits: 'bool' = False, head: 'str | None' = None, weight: 'Weight' = 1.0, name: 'str | None' = None, mask_nan: 'bool' = False)",
    "losses.L1": "(rate: 'float', *, select: 'Selector' = <function kernels>, name: 'str | None' = None)",
    "losses.L2": "(rate: 'float', *, select: 'Selector' = <function kernels>, name: 'str | None' = None)",
    "losses.Loss": "()",
    "losses.LossResult": "(total: 'tf.Tensor', terms: 'dict[str, tf.Tensor]', raw: 'dict[str, tf.Tensor]', denominators: 'dict[str, tf.Tensor]' = <factory>) -> None",
    "losses.PredictionTerm": "(fn: 'Callable[[Any], tf.Tensor]', *, head: 'str | None' = None, weight: 'Weight' = 1.0, name: 'str | None' = None, reduction: 'str' = 'mean_with_sample_weight')",
    "losses.ModelLosses": "(*, weight: 'Weight' = 1.0, name: 'str | None' = None)",
    "losses.NTXent": "(temperature: 'float' = 0.1, *, normalize: 'bool' = True, head: 'str | None' = None, weight: 'Weight' = 1.0, name: 'str | None' = None)",
    "losses.RankNet": "(fn: 'Callable | keras.losses.Loss | None' = None, *, head: 'str | None' = None, weight: 'Weight' = 1.0, name: 'str | None' = None, mask_nan: 'bool' = False, reduction: 'str' = 'mean_with_sample_weight')",
    "losses.Regularizer": "(fn: 'Callable | None' = None, *, weight: 'Weight' = 1.0, name: 'str | None' = None)",
    "losses.Sum": "(terms: 'list[Term]')",
    "losses.Term": "(fn: 'Callable | keras.losses.Loss | None' = None, *, head: 'str | None' = None, weight: 'Weight' = 1.0, name: 'str | None' = None, mask_nan: 'bool' = False, reduction: 'str' = 'mean_with_sample_weight')",
    "losses.Triplet": "(margin: 'float' = 1.0, *, mining: 'str' = 'batch_hard', head: 'str | None' = None, weight: 'Weight' = 1.0, name: 'str | None' = None, mask_nan: 'bool' = False)",
    "losses.Tversky": "(alpha: 'float' = 0.5, beta: 'float' = 0.5, *, smooth: 'float' = 1.0, from_logits: 'bool' = False, head: 'str | None' = None, weight: 'Weight' = 1.0, name: 'str | None' = None, mask_nan: 'bool' = False)",
    "losses.WeightedBinaryCrossentropy": "(pos_weight: 'float | None' = None, *, class_weights: 'tuple[float, float] | list[float] | None' = None, from_logits: 'bool' = False, head: 'str | None' = None, weight: 'Weight' = 1.0, name: 'str | None' = None, mask_nan: 'bool' = False)",
    "losses.evaluate": "(terms, y_true, y_pred, sample_weight=None, *, model=None, step=None) -> 'LossResult'",
    "losses.with_layer_losses": "(loss: 'Loss', model: 'keras.Model | None') -> 'Loss'",
    "metrics.RecallAtK": "(k: 'int | Sequence[int]' = 1, *, dim: 'int', capacity: 'int' = 10000, name: 'str' = 'recall_at_k')",
    "metrics.NDCG": "(k: 'int' = 5, *, gain: 'str' = 'exponential', name: 'str | None' = None)",
}

OTHER_SIGNATURES = {
    "framework.sweeps.pruning.OptunaPruning": "(trial, monitor: 'str', *, finish_pruned: 'bool' = False)",
}


def _signature(obj) -> str:
    """inspect.signature as text, without the addresses of default functions."""
    return re.sub(r" at 0x[0-9a-f]+", "", str(inspect.signature(obj)))


def _resolve(path):
    obj = framework
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_public_names_are_all_and_each_resolves():
    assert sorted(framework.__all__) == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(framework, name) is not None, name
    assert set(PUBLIC_NAMES) <= set(dir(framework))


@pytest.mark.parametrize("module", sorted(MODULE_NAMES))
def test_module_names_users_import_exist(module):
    missing = [n for n in MODULE_NAMES[module] if not hasattr(getattr(framework, module), n)]
    assert not missing, f"framework.{module} lost {missing}"


def test_signatures_of_user_facing_callables():
    actual = {path: _signature(_resolve(path)) for path in SIGNATURES}
    changed = {
        p: f"pinned {SIGNATURES[p]}\n        now {actual[p]}"
        for p in SIGNATURES
        if actual[p] != SIGNATURES[p]
    }
    assert not changed, "public signatures changed:\n" + "\n".join(f"  {p}: {d}" for p, d in changed.items())


def test_signatures_outside_the_package_namespace():
    from framework.sweeps import pruning

    assert _signature(pruning.OptunaPruning) == OTHER_SIGNATURES["framework.sweeps.pruning.OptunaPruning"]


def test_unknown_attribute_names_the_module():
    with pytest.raises(AttributeError, match="framework.*no_such_name"):
        framework.no_such_name  # noqa: B018


TF_FREE_MODULES = [
    "framework",
    "framework.sweeps",
    "framework.sweeps.processes",
    "framework.sweeps.results",
    "framework.sweeps.search",
    "framework.config",
    "framework.sweeps.optuna_study",
    "framework.outputs.hparams",
    "framework.sweeps.sweep_command",
    "framework.sweeps.compare",
]


@pytest.fixture(scope="module")
def tf_free_imports():
    """One fresh interpreter imports TF_FREE_MODULES in turn: after each, is TensorFlow (or Keras) loaded?

    Loaded modules only accumulate, so a module that pulls TensorFlow in fails its own case (and
    the later ones): no case passes that would fail in an interpreter of its own.
    """
    code = (
        "import importlib, sys\n"
        f"for module in {TF_FREE_MODULES!r}:\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "        print(module, 'tensorflow' in sys.modules,\n"
        "              sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras')))[:5])\n"
        "    except Exception as e:\n"
        "        print(module, repr(e))\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=seconds(240)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


@pytest.mark.parametrize("module", TF_FREE_MODULES)
def test_sweep_parts_import_without_tensorflow(module, tf_free_imports):
    assert tf_free_imports[module].startswith("False "), (module, tf_free_imports[module])


def test_public_names_still_start_the_trainer(run_without_workdir):
    assert run_without_workdir.returncode == 0, run_without_workdir.stderr[-2000:]
    assert "PUBLIC_NAMES_LOADED_TENSORFLOW True" in run_without_workdir.stdout, run_without_workdir.stdout[
        -500:
    ]


UNUSED_BY_A_RUN_WITHOUT_WORKDIR = ("orbax", "optuna", "tensorboard")


@pytest.fixture(scope="module")
def run_without_workdir():
    """A fresh interpreter: the public names, then a run without workdir (fit and evaluate)."""
    code = (
        "import sys\n"
        "import framework\n"
        "framework.Trainer\n"
        "framework.data.global_shuffle\n"
        "print('PUBLIC_NAMES_LOADED_TENSORFLOW', 'tensorflow' in sys.modules, flush=True)\n"
        "import toys\n"
        "x, y = toys.blobs(32)\n"
        "t = toys.ArrayTrainer(toys.config(), data=(x, y), model_fn=toys.mlp, eval_data=(x, y))\n"
        "t.fit()\n"
        "t.evaluate()\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({UNUSED_BY_A_RUN_WITHOUT_WORKDIR!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=seconds(600)
    )


def test_a_run_without_workdir_loads_no_checkpoint_sweep_or_tensorboard_modules(run_without_workdir):
    """orbax (and JAX with it), Optuna and TensorBoard load only when a run saves, sweeps or writes summaries."""
    result = run_without_workdir
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-500:]
