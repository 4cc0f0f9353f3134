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

import numpy as np
import pytest
import tensorflow as tf

import framework

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = ("imbalanced", "segmentation", "multitask", "metric_learning", "ranking", "gan", "images", "lm")


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


def smoke_trainer(
    name: str, trainer_class: str, variant: str = "smoke", *, workdir=None, strategy=None, **overrides
):
    with _experiments_on_path():
        module = _load(f"experiments/{name}.py", f"experiment_{name}")
    config = _load(f"configs/{name}.py", f"config_{name}").get_config(variant)
    for key, value in overrides.items():
        section, _, leaf = key.rpartition(".")
        (config[section] if section else config)[leaf] = value
    return getattr(module, trainer_class)(config, workdir, strategy=strategy)


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory):
    """A small image dataset written by scripts/make_images.py (4 train shards, 1 eval shard)."""
    make_images = _load("scripts/make_images.py", "make_images")
    return make_images.make(str(tmp_path_factory.mktemp("images")), train=2000, eval=400, shards=4)


def final_eval(history: list[dict]) -> dict:
    return {k[len("val/") :]: v for k, v in history[-1].items() if k.startswith("val/")}


@pytest.mark.slow
def test_imbalanced_finds_the_rare_positives():
    trainer = smoke_trainer("imbalanced", "ImbalancedTrainer")
    positives = trainer.eval_data[1].mean()
    assert 0.08 <= positives <= 0.12  # ~10% positives after subsampling
    val = final_eval(trainer.fit())
    assert val["pr_auc"] >= 0.6  # chance: the positive share, ~0.1
    assert val["recall"] >= 0.7 and val["f1"] >= 0.4
    assert {"loss/weighted_bce", "loss/l2", "recall_at_p90"} <= set(val)


@pytest.mark.slow
def test_segmentation_outlines_the_circles():
    trainer = smoke_trainer("segmentation", "SegmentationTrainer")
    foreground = trainer.eval_data[1].mean()
    val = final_eval(trainer.fit())
    # Everything foreground would give IoU = the foreground share (~0.09); nothing, 0.
    assert val["iou"] >= max(0.3, 3 * foreground)
    assert val["dice"] == pytest.approx(2 * val["iou"] / (1 + val["iou"]), abs=1e-4)  # same confusion matrix
    assert {"loss/dice", "loss/bce"} <= set(val)


@pytest.mark.slow
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


@pytest.mark.slow
def test_metric_learning_improves_retrieval_over_the_untrained_embedding():
    trainer = smoke_trainer("metric_learning", "MetricLearningTrainer")
    before = trainer.evaluate()
    val = final_eval(trainer.fit())
    assert val["recall_at_k/1"] >= max(0.9, before["recall_at_k/1"] + 0.05)
    assert val["recall_at_k/5"] >= val["recall_at_k/1"]
    assert val["loss/triplet"] < 0.7 * before["loss/triplet"]


@pytest.mark.slow
def test_ranking_beats_random_scores():
    trainer = smoke_trainer("ranking", "RankingTrainer")
    assert 0.15 <= trainer.random_ndcg <= 0.4
    val = final_eval(trainer.fit())
    assert val["ndcg_5_random"] == pytest.approx(trainer.random_ndcg)
    assert val["ndcg_5"] >= trainer.random_ndcg + 0.2


@pytest.mark.slow
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


@pytest.mark.slow
def test_images_resnet_learns_from_tfrecord_shards(image_shards, tmp_path):
    trainer = smoke_trainer("images", "ImagesTrainer", workdir=str(tmp_path), **{"data.dir": image_shards})
    assert trainer.config.optimizer.ema > 0
    val = final_eval(trainer.fit())
    assert val["accuracy"] >= 0.35  # chance: 0.1
    # A step-based run over shuffled_records: each checkpoint saves the input position, a few KB.
    positions = tmp_path / "checkpoints" / "input"
    saved = [p for p in positions.rglob("*") if p.is_file()]
    assert saved and sum(p.stat().st_size for p in saved) < 64 * 1024 * len(os.listdir(positions))


def _images_weights(image_shards, devices, sync_bn):
    if len(devices) == 1:  # a one-device MirroredStrategy fails in the update's tf.cond (merge_call)
        strategy = tf.distribute.OneDeviceStrategy(devices[0])
    else:
        strategy = framework.distribute._fresh_collective_keys(tf.distribute.MirroredStrategy)(devices)
    trainer = smoke_trainer(
        "images", "ImagesTrainer", strategy=strategy,
        **{"data.dir": image_shards, "model.sync_bn": sync_bn, "model.widths": (4, 8), "model.blocks": (1, 1),
           "train_steps": 6, "optimizer.ema": 0.0,
           # SGD: Adam's g / sqrt(v) would magnify float32 rounding in near-zero gradients.
           "optimizer.name": "sgd", "optimizer.learning_rate": 0.05},
    )  # fmt: skip
    trainer.fit(validate=False)
    return [np.asarray(v) for v in trainer.model.weights]  # BatchNorm's moving statistics included


def test_images_sync_batchnorm_gives_the_same_weights_on_one_and_two_replicas(image_shards):
    one, two = (_images_weights(image_shards, d, sync_bn=True) for d in (["/cpu:0"], ["/cpu:0", "/cpu:1"]))
    assert max(np.abs(a - b).max() for a, b in zip(one, two)) <= 1e-5
    # Plain BatchNorm normalises each replica's half batch on its own: the runs part.
    plain = _images_weights(image_shards, ["/cpu:0", "/cpu:1"], sync_bn=False)
    assert max(np.abs(a - b).max() for a, b in zip(one, plain)) > 1e-4


def test_images_fewer_files_than_input_pipelines_is_refused(image_shards):
    with _experiments_on_path():
        images = _load("experiments/images.py", "experiment_images")
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0, num_replicas_in_sync=2)
    with pytest.raises(ValueError, match=r"1 file\(s\) match .*eval-\*.* 2 input pipelines"):
        images.shard_files(os.path.join(image_shards, "eval-*.tfrecord"), context)


@pytest.mark.slow
def test_lm_learns_bytes_and_logs_a_sample(tmp_path):
    trainer = smoke_trainer("lm", "LMTrainer", workdir=str(tmp_path))
    assert trainer.config.grad_accum_steps > 1 and trainer.config.optimizer.global_clipnorm > 0
    assert trainer.eval_data["mask"][-1].min() == 0.0  # the packed tail is padded and masked
    val = final_eval(trainer.fit())
    assert val["bits_per_byte"] <= 5.5  # uniform over 256 bytes: 8 bits
    assert val["perplexity"] == pytest.approx(2 ** val["bits_per_byte"], rel=1e-4)
    config = trainer.config  # a step-based run: a sample at each evaluation
    assert len(trainer.sampler.samples) == config.train_steps // config.eval_every_steps
    assert os.listdir(tmp_path / "samples")  # TensorBoard text
