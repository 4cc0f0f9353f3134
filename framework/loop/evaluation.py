"""Evaluation and prediction over whole datasets, with a runner's compiled eval / predict functions.

    evaluate(dataset):
        input = dataset, or the runner's build_eval_dataset (built once)
        eval_fn = the compiled eval function for the input's element spec
        reset the eval metrics
        in the eval phase: eval_fn(iterator, n) until the input ends   # n <= steps per call
        return loss means and eval metric results

`predict` is the same walk with the predict function, concatenating outputs.
The Controller evaluates at period ends through the same `Evaluator`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from framework import data
from framework.data import DistributedInput
from framework.loop.runner import Runner
from framework.outputs import run_log


def _has_labels(spec) -> bool:
    return isinstance(spec, tuple) and len(spec) > 1


class Evaluator:
    """Runs a runner's eval and predict functions over datasets.

    Args:
      runner: the runner whose state, compiled functions and eval phase are used.
      steps_per_call: the number of steps each compiled eval call may run.
    """

    def __init__(self, runner: Runner, steps_per_call: Callable[[], int]):
        self.runner = runner
        self.steps_per_call = steps_per_call
        self.eval_input: DistributedInput | None = None
        self.eval_fns: dict = {}  # one per input spec
        self.predict_fns: dict = {}

    def _limit(self) -> int:
        debug = self.runner.config.debug
        return debug.fast_dev_run or debug.limit_eval_steps

    def has_eval(self) -> bool:
        """Whether the runner's `build_eval_dataset` gives a dataset (built once, on the first call)."""
        if self.eval_input is None:
            self.eval_input = DistributedInput(
                self.runner.strategy,
                self.runner.build_eval_dataset,
                "build_eval_dataset",
                optional=True,
                limit=self._limit(),
                pad_workers=True,
            )
        return self.eval_input.present

    def state_spec(self, dataset=None):
        """An element spec to build the runner's variables from before a restore; None: the model alone.

        The first that exists: `dataset` (given to evaluate or predict) when its
        batches carry labels, the eval input, the training dataset, `dataset`
        without labels. Labels build the metrics that make their variables on first use.
        """
        hint = dataset.element_spec if isinstance(dataset, tf.data.Dataset) else None
        if _has_labels(hint):
            return hint
        if self.has_eval():
            return self.eval_input.element_spec
        try:
            train = self.runner.build_train_dataset(tf.distribute.InputContext())
        except NotImplementedError:
            train = None
        return train.element_spec if isinstance(train, tf.data.Dataset) else hint

    def _input_of(self, source, what: str) -> DistributedInput:
        """A fresh distributed input for a dataset (global batches) or hook given to evaluate/predict."""
        hook = data.as_hook(source, what)
        return DistributedInput(self.runner.strategy, hook, what, limit=self._limit(), pad_workers=True)

    @staticmethod
    def _compiled(cache: dict, spec, make):
        """`cache`'s function for inputs of element spec `spec`, made by `make()` for a new spec.

        A step function calls the graph of its first trace directly, so inputs
        of another spec (a test set with other shapes) need a function of their own.
        """
        key = str(spec)
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def evaluate(self, dataset=None) -> dict[str, float]:
        """The eval loss means and eval metric results over `dataset` (None: `build_eval_dataset`'s).

        Raises:
          ValueError: no dataset given and `build_eval_dataset` returns None.
          TypeError: `dataset` is neither a dataset nor a function.
        """
        t = self.runner
        if dataset is not None:
            eval_input = self._input_of(dataset, "evaluate(dataset)")
        elif self.has_eval():
            eval_input = self.eval_input
        else:
            raise ValueError(
                "evaluate() needs build_eval_dataset() to return a dataset, or a dataset argument."
            )

        def make():
            t.build_state(eval_input.element_spec)
            return t.make_eval_function()

        eval_fn = self._compiled(self.eval_fns, eval_input.element_spec, make)
        t.reset_metrics("eval")
        iterator = eval_input.fresh_iterator()
        total, done, sums = eval_input.steps, 0, run_log.Sums()
        with t.eval_phase():
            while done < total:
                n = eval_input.call_sizes(done, self.steps_per_call())
                call_sums, _, _ = eval_fn(iterator, tf.constant(n, tf.int64))
                sums.add(call_sums)
                done += n
            return {**sums.means(), **t.metric_results("eval")}

    def predict(self, dataset):
        """The predict function's outputs over `dataset`, concatenated in order (numpy arrays)."""
        t = self.runner
        source = self._input_of(dataset, "predict(dataset)")

        def make():
            t.build_state(source.element_spec)
            return t.make_predict_function()

        predict_fn = self._compiled(self.predict_fns, source.element_spec, make)
        iterator, outputs = source.fresh_iterator(), []
        with t.eval_phase():
            for _ in range(source.steps):
                outputs.append(tf.nest.map_structure(lambda v: v.numpy(), predict_fn(iterator)))
        return tf.nest.map_structure(lambda *parts: np.concatenate(parts), *outputs)
