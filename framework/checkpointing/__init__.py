"""Checkpoints: save, resume exactly, survive preemption; the variables a checkpoint holds.

Owns: `checkpoint` (orbax save/restore, best checkpoints, preemption), `variable_groups` (every
variable training reads or writes, grouped and snapshotted as numpy).

May import: outputs, config, and the shared leaves in framework/.
"""
