"""Distributed input: dataset hooks, batch layout over replicas, saved input positions, record streams.

Owns: `distributed_input` (`DistributedInput`: a dataset hook, its length in steps, its
iterators), `pipelines` (one pipeline: a hook's dataset for an input context), `batch_layout` (the last step spread over replicas, empty batches), `input_positions`
(the saved position of an endless input, `global_shuffle`), `record_stream` (`shuffled_records`).

May import: the shared leaves in framework/ (`distribute`, `periods`).
"""

from framework.data.distributed_input import SLOW_COUNT_SECONDS, DistributedInput
from framework.data.input_positions import global_shuffle
from framework.data.pipelines import Hook, Pipeline, as_hook
from framework.data.record_stream import shuffled_records

__all__ = [
    "SLOW_COUNT_SECONDS",
    "DistributedInput",
    "Hook",
    "Pipeline",
    "as_hook",
    "global_shuffle",
    "shuffled_records",
]
