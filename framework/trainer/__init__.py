"""The `Trainer` users subclass: build hooks, the per-replica step, and the components it owns.

Owns: `trainer` (`Trainer`, `StepLoss`), its one base `facade`, the components it owns and
where they are made (`components`: `counters`, `phase_metrics`, `compiled_steps`, `step_helpers`,
`variables`, `host_reads`, `phases`), pre-flight checks (`input_checks`, `run_checks`), `modes`
(eval, continuous eval, export), `reload` (`Trainer.from_workdir`).

May import: loop, data, optim, checkpointing, outputs, config, losses, metrics, and the shared
leaves.
"""
