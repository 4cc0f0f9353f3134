"""Every experiment's smoke config trains in-process and clears a weak bar of its own.

In-process (no subprocess per experiment): each script is imported from its
path and its trainer built from `configs/<name>.py:smoke`. The launcher path
is covered by test_launch.py. The full configs reach the bars recorded in
the README; these bars are looser but far above chance.
"""

import contextlib
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = ("imbalanced", "segmentation", "multitask", "metric_learning", "ranking", "gan")


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _experiments_on_path():
    """The scripts import their siblings (`common`, `digits`), as `python experiments/x.py` allows."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        yield
    finally:
        sys.path.remove(os.path.join(ROOT, "experiments"))


def smoke_trainer(name: str, trainer_class: str, variant: str = "smoke"):
    with _experiments_on_path():
        module = _load(f"experiments/{name}.py", f"experiment_{name}")
    config = _load(f"configs/{name}.py", f"config_{name}").get_config(variant)
    return getattr(module, trainer_class)(config)


def final_eval(history: list[dict]) -> dict:
    return {k[len("val/") :]: v for k, v in history[-1].items() if k.startswith("val/")}


def test_imbalanced_finds_the_rare_positives():
    trainer = smoke_trainer("imbalanced", "ImbalancedTrainer")
    positives = trainer.eval_data[1].mean()
    assert 0.08 <= positives <= 0.12  # ~10% positives after subsampling
    val = final_eval(trainer.fit())
    assert val["pr_auc"] >= 0.6  # chance: the positive share, ~0.1
    assert val["recall"] >= 0.7 and val["f1"] >= 0.4
    assert {"loss/weighted_bce", "loss/l2", "recall_at_p90"} <= set(val)


def test_segmentation_outlines_the_circles():
    trainer = smoke_trainer("segmentation", "SegmentationTrainer")
    foreground = trainer.eval_data[1].mean()
    val = final_eval(trainer.fit())
    # Everything foreground would give IoU = the foreground share (~0.09); nothing, 0.
    assert val["iou"] >= max(0.3, 3 * foreground)
    assert val["dice"] == pytest.approx(2 * val["iou"] / (1 + val["iou"]), abs=1e-4)  # same confusion matrix
    assert {"loss/dice", "loss/bce"} <= set(val)


def test_multitask_learns_every_head_with_missing_labels_and_a_warmup_weight():
    trainer = smoke_trainer("multitask", "MultitaskTrainer")
    labelled = trainer.train_data[2]["class"].mean()
    assert 0.65 <= labelled <= 0.75
    history = trainer.fit()
    val = final_eval(history)
    assert val["class/accuracy"] >= 0.85 and val["parity/accuracy"] >= 0.8  # chance: 0.1, 0.5
    assert val["ink/mae"] <= 0.8  # standardized target: a constant prediction gives ~0.8
    for term in ("class", "parity", "ink", "l2"):
        assert f"loss/{term}" in history[-1]
    # Raw (unweighted) values only for terms whose weight is not 1.
    assert {k for k in history[-1] if k.endswith("/raw")} == {
        f"{split}loss/{term}/raw" for split in ("", "val/") for term in ("parity", "ink")
    }
    # The parity weight ramps up over warmup_steps, then stays at task.parity_weight.
    task, steps_per_epoch = trainer.config.task, trainer.step // len(history)
    assert steps_per_epoch < task.warmup_steps < trainer.step - steps_per_epoch
    first, last = history[0], history[-1]
    assert first["loss/parity"] < 0.5 * task.parity_weight * first["loss/parity/raw"]
    assert last["loss/parity"] == pytest.approx(task.parity_weight * last["loss/parity/raw"], rel=1e-4)


def test_metric_learning_improves_retrieval_over_the_untrained_embedding():
    trainer = smoke_trainer("metric_learning", "MetricLearningTrainer")
    before = trainer.evaluate()
    val = final_eval(trainer.fit())
    assert val["recall_at_k/1"] >= max(0.9, before["recall_at_k/1"] + 0.05)
    assert val["recall_at_k/5"] >= val["recall_at_k/1"]
    assert val["loss/triplet"] < 0.7 * before["loss/triplet"]


def test_ranking_beats_random_scores():
    trainer = smoke_trainer("ranking", "RankingTrainer")
    assert 0.15 <= trainer.random_ndcg <= 0.4
    val = final_eval(trainer.fit())
    assert val["ndcg_5_random"] == pytest.approx(trainer.random_ndcg)
    assert val["ndcg_5"] >= trainer.random_ndcg + 0.2


def test_gan_covers_modes_with_two_optimizers():
    trainer = smoke_trainer("gan", "GanTrainer")
    history = trainer.fit()
    val = final_eval(history)
    assert val["modes/covered"] >= 4 and val["modes/quality"] >= 0.3  # a collapsed generator: 1-2
    assert {"d_loss", "d_loss/real", "d_loss/fake", "g_loss"} <= set(history[-1])  # g_loss: one term
    assert (
        int(trainer.d_optimizer.iterations.numpy())
        == int(trainer.optimizer.iterations.numpy())
        == trainer.step
    )


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_an_unknown_variant_lists_the_valid_ones(name):
    config = _load(f"configs/{name}.py", f"config_{name}")
    with pytest.raises(ValueError, match=r"unknown variant 'nope'; valid: .*smoke"):
        config.get_config("nope")
