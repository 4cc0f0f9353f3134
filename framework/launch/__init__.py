"""`framework.run(TrainerClass)`: the absl entry point of a research script, its flags and modes.

Owns: `entry_point` (`run`, the flags, what each `--mode` runs).

May import: everything else (launch is the top of the tree).
"""
