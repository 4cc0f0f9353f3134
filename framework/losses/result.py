"""What calling a loss returns: global totals, per-term values and their weights in means over steps."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from framework.log_values import Weighted, WeightedSum


@dataclasses.dataclass
class LossResult:
    """What calling a loss returns.

    total: scalar float32, the global loss; its gradient is this replica's
      share (see module docstring).
    terms: name -> weighted global value; they sum to `total`.
    raw: name -> unweighted global value.
    denominators: name -> the term's weight in means over steps: the
      global sum of its example weights (or its global number of values)
      for a per-example term, 1 for batch-level terms and regularizers.
    """

    total: tf.Tensor
    terms: dict[str, tf.Tensor]
    raw: dict[str, tf.Tensor]
    denominators: dict[str, tf.Tensor] = dataclasses.field(default_factory=dict)

    def logs(self, prefix: str = "") -> dict[str, Weighted | WeightedSum]:
        """`loss`; `loss/<term>` when there are several terms; `loss/<term>/raw` when its weight is not 1.

        Each value carries its denominator (`framework.log_values`), so a
        mean over steps is the mean over examples; the total's mean is the
        sum of its terms' means.
        """
        stopped: dict[int, tf.Tensor] = {}

        def stop(value):
            if id(value) not in stopped:
                stopped[id(value)] = tf.stop_gradient(value)
            return stopped[id(value)]

        one = tf.constant(1.0)
        weighted = {
            name: Weighted(stop(value), self.denominators.get(name, one))
            for name, value in self.terms.items()
        }
        if len(weighted) == 1:
            out = {f"{prefix}loss": next(iter(weighted.values()))}
        else:
            out = {f"{prefix}loss": WeightedSum(tuple(weighted.values()))}
        for name, value in weighted.items():
            if len(weighted) > 1:
                out[f"{prefix}loss/{name}"] = value
            if self.raw[name] is not self.terms[name]:
                out[f"{prefix}loss/{name}/raw"] = Weighted(stop(self.raw[name]), value.weight)
        return out
