"""What each `--mode` other than training does with a trainer.

* `evaluate_checkpoint`: restore one checkpoint (latest, best, or a step) and evaluate it.
* `continuous_eval`: watch the workdir; evaluate each new checkpoint once, in
  step order, writing `val/` records; stop after the run's final checkpoint,
  or when no new checkpoint appears for `timeout_secs`.
* `export`: restore, write a SavedModel for serving with Keras'
  `model.export` under `workdir/export/<step>` (the EMA weights when
  `config.optimizer.ema` is set), reload it and check that it predicts what
  the model predicts.
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from framework.checkpointing import checkpoint
from framework.optim import keras_internals
from framework.outputs import metrics_file, run_log


def _restore(trainer, which: str | int) -> int:
    step = trainer.restore(which)
    if step is None:
        raise checkpoint.CheckpointNotFound(f"No checkpoint to restore in {trainer.workdir}/checkpoints.")
    return step


def evaluate_checkpoint(trainer, which: str | int = "latest") -> dict[str, float]:
    step = _restore(trainer, which)
    results = trainer.evaluate()
    run_log.RunLog(trainer.workdir, enabled=trainer.is_chief).write(
        "eval", step, trainer.epoch, metrics_file.as_val(results)
    )
    logging.info("Evaluated checkpoint %d: %s", step, results)
    return results


def continuous_eval(trainer, *, timeout_secs: float = 600.0, poll_secs: float = 1.0) -> dict[str, float]:
    eval_log = run_log.RunLog(trainer.workdir, enabled=trainer.is_chief)
    seen: set[int] = set()
    results: dict[str, float] = {}
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        checkpoints = trainer.controller.open_checkpoints(writer=False)
        pending = [s for s in (checkpoints.steps() if checkpoints else []) if s not in seen]
        for step in pending:
            seen.add(step)
            try:
                trainer.restore(step)
                final = checkpoints.read_meta(step).get("final", False)
            except Exception as e:  # noqa: BLE001 - deleted by the trainer's retention, or unreadable
                logging.warning("Skipping checkpoint %d: %s", step, e)
                continue
            results = trainer.evaluate()
            eval_log.write("eval", step, trainer.epoch, metrics_file.as_val(results))
            logging.info("continuous_eval: step %d: %s", step, run_log.to_floats(results))
            deadline = time.monotonic() + timeout_secs
            if final:
                return results
        time.sleep(poll_secs)
    logging.warning("continuous_eval: no new checkpoint for %.0fs; stopping.", timeout_secs)
    return results


def _sample_inputs(trainer):
    hook = trainer.build_eval_dataset
    dataset = hook(tf.distribute.InputContext())
    if dataset is None:
        dataset = trainer.build_train_dataset(tf.distribute.InputContext())
    batch = next(iter(dataset))
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def export(trainer, which: str | int = "latest") -> str:
    """Writes `workdir/export/<step>`; returns the path."""
    step = _restore(trainer, which)
    return write_export(trainer, os.path.join(trainer.workdir, "export", str(step)))


def write_export(trainer, path: str) -> str:
    """Writes the trainer's model as it is to `path`, reloads it and checks its predictions; returns the path."""
    step = trainer.step
    if not trainer.is_chief:  # the chief's export is the one; the others restored alongside it
        return path
    x = _sample_inputs(trainer)
    with keras_internals.ema_weights(
        trainer.optimizer
    ):  # serve the averaged weights when config.optimizer.ema
        trainer.model.export(path, format="tf_saved_model", verbose=False)
        expected = tf.nest.map_structure(np.asarray, trainer.model(x, training=False))
    reloaded = tf.saved_model.load(path)
    served = tf.nest.map_structure(np.asarray, reloaded.serve(x))
    worst = max(
        float(np.max(np.abs(a - b))) for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(served))
    )
    if worst > 1e-5:
        raise RuntimeError(f"Exported model at {path} predicts differently (max abs difference {worst:.3g}).")
    logging.info(
        "Exported step %d to %s; reloaded predictions match (max abs difference %.2g).", step, path, worst
    )
    return path
