"""How many steps a compiled train or eval call runs: `config.steps_per_execution`, or tuned ("auto")."""

from __future__ import annotations

# Auto steps_per_execution: the first call's size, and every call's with config.deterministic.
AUTO_STEPS = 32


class StepsPerCall:
    """`config.steps_per_execution` when set; otherwise tuned to ~0.2 s per compiled call.

    Args:
      config: the run config (its `steps_per_execution` and `deterministic` are read when used).
    """

    def __init__(self, config):
        self.config = config
        self.auto_steps = AUTO_STEPS

    def __call__(self) -> int:
        return self.config.steps_per_execution or self.auto_steps

    def tune(self, n: int, seconds: float, traced: bool) -> None:
        """After a call of `n` steps that took the workers' mean `seconds` (`traced`: the train
        function has been traced, so the call ran compiled steps).

        Fixed with config.deterministic: timing would make the grouping of steps
        into calls differ between runs and across a resume, and with it the
        numbers (docs/determinism.md).
        """
        if self.config.steps_per_execution or self.config.deterministic:
            return
        if traced and seconds > 0:
            self.auto_steps = int(min(1000, max(1, 0.2 / (seconds / n))))
