"""`framework.Periodic` on its own, with an injected clock: step and time schedules."""

import pytest

import framework


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def recorder():
    runs = []
    return runs, lambda trainer, step, logs: runs.append(step)


def test_every_secs_runs_at_the_first_boundary_after_the_interval():
    clock, (runs, fn) = FakeClock(), recorder()
    hook = framework.Periodic(fn, every_secs=10.0, clock=clock)
    ran = []
    for step, now in [(1, 103.0), (2, 109.9), (3, 110.0), (4, 115.0), (5, 119.99), (6, 125.0), (7, 140.0)]:
        clock.now = now
        ran.append(hook.maybe_run(None, step, {}))
    # 110.0 is 10 s after creation; the next interval counts from that run, not from creation.
    assert runs == [3, 6, 7]
    assert ran == [False, False, True, False, False, True, True]
    assert hook.steps_to_next(3) is None


def test_every_secs_does_not_catch_up_after_a_long_gap():
    clock, (runs, fn) = FakeClock(0.0), recorder()
    hook = framework.Periodic(fn, every_secs=1.0, clock=clock)
    clock.now = 50.0
    hook.maybe_run(None, 1, {})
    clock.now = 50.5
    hook.maybe_run(None, 2, {})
    assert runs == [1]


def test_steps_and_secs_together_and_the_step_run_restarts_the_clock():
    clock, (runs, fn) = FakeClock(0.0), recorder()
    hook = framework.Periodic(fn, every_steps=4, every_secs=5.0, clock=clock)
    for step, now in [(1, 1.0), (2, 6.0), (3, 7.0), (4, 8.0), (5, 12.0), (6, 12.5), (7, 13.5), (8, 14.0)]:
        clock.now = now
        hook.maybe_run(None, step, {})
    # 2: time (6 s); 4: steps, and restarts the clock at 8 s (so not 5 or 6); 7: time (13.5 - 8 >= 5); 8: steps.
    assert runs == [2, 4, 7, 8]
    assert [hook.steps_to_next(s) for s in (0, 1, 4, 7)] == [4, 3, 4, 1]


def test_the_hook_gets_trainer_step_and_logs():
    seen = []
    hook = framework.Periodic(lambda t, step, logs: seen.append((t, step, logs)), every_steps=2)
    hook.maybe_run("trainer", 1, {"loss": 1.0})
    hook.maybe_run("trainer", 2, {"loss": 0.5})
    assert seen == [("trainer", 2, {"loss": 0.5})]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "every_steps and/or every_secs"),
        ({"every_steps": 0, "every_secs": 0}, "every_steps and/or every_secs"),
        ({"every_steps": -1}, "every_steps must be >= 1"),
        ({"every_secs": -2.0}, "every_secs must be >= 0"),
    ],
)
def test_bad_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        framework.Periodic(lambda t, s, logs: None, **kwargs)
