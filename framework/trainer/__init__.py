"""The `Trainer` users subclass: build hooks, the per-replica step, and the parts it is built from.

Owns: `trainer` (`Trainer`, `StepLoss`), its parts (`phases`, `variables`, `host_reads`,
`compiled_steps`), pre-flight checks (`input_checks`, `run_checks`), `modes` (eval, continuous
eval, export), `reload` (`Trainer.from_workdir`).

May import: loop, data, optim, checkpointing, outputs, config, losses, metrics, sweeps (the
config-file loader), and the shared leaves.
"""
