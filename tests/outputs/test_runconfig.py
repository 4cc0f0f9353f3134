"""The config a run records, and the config eval/export start from."""

import json
import logging

import keras
import pytest

from framework.outputs import recorded_config

from toys import ArrayTrainer, blobs, config, mlp


class OwnOptimizers(ArrayTrainer):
    def build_model(self):
        self.critic = mlp(seed=1)
        return super().build_model()

    def build_optimizer(self):
        self.add_optimizer(keras.optimizers.Adam(0.01), self.critic, name="critic")
        return keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)


def test_config_json_records_the_optimizer_that_runs(tmp_path):
    OwnOptimizers(config(), data=blobs(n=32), model_fn=mlp, workdir=str(tmp_path / "own")).fit()
    recorded = json.loads((tmp_path / "own" / "config.json").read_text())
    expected = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True).get_config()
    assert recorded["optimizer"]["built_by"] == "OwnOptimizers.build_optimizer"
    assert recorded["optimizer"]["class_name"] == "SGD"
    for key in ("momentum", "nesterov", "weight_decay", "clipnorm"):
        assert recorded["optimizer"]["config"][key] == expected[key]
    assert recorded["optimizer"]["config"]["learning_rate"] == pytest.approx(0.05)
    assert recorded["added_optimizers"]["critic"]["class_name"] == "Adam"
    assert recorded["added_optimizers"]["critic"]["config"]["learning_rate"] == pytest.approx(0.01)

    ArrayTrainer(config(), data=blobs(n=32), model_fn=mlp, workdir=str(tmp_path / "default")).fit()
    recorded = json.loads((tmp_path / "default" / "config.json").read_text())
    assert recorded["optimizer"] == json.loads(json.dumps(config().optimizer.to_dict()))


def test_later_modes_start_from_the_recorded_config_with_overrides_on_top(tmp_path, caplog):
    trained = config(**{"model.widths": (4, 8), "optimizer.boundaries": (3,), "optimizer.rates": (0.1, 0.01),
                        "optimizer.schedule": "piecewise", "checkpoint.best_metric": "loss"})  # fmt: skip
    ArrayTrainer(trained, data=blobs(n=32), model_fn=mlp, workdir=str(tmp_path)).fit()
    # The config file now (edited since), plus overrides: what the run is comes from its record,
    # where and how to run from the command line.
    given = config(**{"model.widths": (2, 2), "batch_size": 8, "debug.limit_eval_steps": 1})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        merged = recorded_config.for_mode(given, {"batch_size": 8}, str(tmp_path))
    assert merged.checkpoint.best_metric == "loss" and merged.optimizer.schedule == "piecewise"
    assert merged.optimizer.boundaries == (3,) and merged.model.widths == (4, 8) and merged.batch_size == 8
    assert merged.debug.limit_eval_steps == 1
    assert not [
        r for r in caplog.records if r.levelno >= logging.WARNING
    ]  # batch_size does not change what the checkpoints hold

    with caplog.at_level(logging.WARNING):
        merged = recorded_config.for_mode(given, {"checkpoint.best_metric": "acc"}, str(tmp_path))
    assert merged.checkpoint.best_metric == "acc"
    assert "--config.checkpoint.best_metric='acc' (the run had 'loss')" in caplog.text
    assert recorded_config.for_mode(given, {}, str(tmp_path / "elsewhere")) is given  # nothing recorded


def test_restoring_best_without_a_best_metric_says_so(tmp_path):
    ArrayTrainer(config(epochs=2), data=blobs(n=32), model_fn=mlp, workdir=str(tmp_path)).fit()
    evaluator = ArrayTrainer(
        config(), data=blobs(n=32), eval_data=blobs(n=32), model_fn=mlp, workdir=str(tmp_path)
    )
    with pytest.raises(ValueError, match=r"did not set config.checkpoint.best_metric.*saved: 2, 4") as error:
        evaluator.restore("best")
    assert "the run logged loss, lr." in str(error.value)
    evaluator = ArrayTrainer(
        config(**{"checkpoint.best_metric": "val/acc"}), data=blobs(n=32), eval_data=blobs(n=32),
        model_fn=mlp, workdir=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"records config.checkpoint.best_metric='val/acc'.*saved: 2, 4"):
        evaluator.restore("best")
