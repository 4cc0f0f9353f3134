"""Sweeps, searches and their results; needs no TensorFlow (`import framework.sweeps` starts none).

Owns: `processes` (a config's `get_sweep(arg)` points, checked, named and run as processes),
`search` (Optuna search), `optuna_study`, `pruning` (the Optuna pruning callback, loaded only by
trials that ask for it), `results` (final and best metrics of runs), `compare`, `run_plot`,
`sweep_command` (the `framework-sweep` command).

May import: config, outputs (`hparams`), and the shared leaves.
"""
