"""The host loop around a runner's compiled steps, and the compiled multi-step function.

Owns: `controller` (the host side of a run), `run_checkpoints` (a run's checkpoints: open, load,
save with the run's position, `checkpoint.min_interval_secs`), `steps_per_call` (fixed or auto),
`runner` (the `Runner` protocol: all the loop may ask of a trainer), `step_function` (the compiled multi-step function over a distributed
iterator), `evaluation`, `nonfinite` (`config.nan_policy`), `callbacks` (Keras callbacks and
`Periodic` hooks), `profiling`.

May import: data, checkpointing, outputs, optim, config, and the shared leaves. Never trainer/:
the loop knows the `Runner` protocol only.
"""
