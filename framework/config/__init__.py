"""Run configuration: defaults and checks, variants from `get_config(arg)`, sweep spaces, errors.

Owns: `schema` (the framework's defaults, `parse_arg`, `resolve`, `load`, value checks), `errors`
(`ConfigError`, "did you mean"), `sweep_space` (points and ranges of a sweep), `record_file` (a
run's recorded config.json read back as plain data), `command_line` (`--config` and overrides
before absl parses them). Needs no TensorFlow.

May import: nothing else of the framework (config is the bottom of the tree).
"""

from framework.config.errors import ConfigError, did_you_mean
from framework.config.schema import (
    EPOCH_KEYS,
    FREE_SECTIONS,
    MODES,
    NAN_POLICIES,
    PRECISIONS,
    STRATEGIES,
    check_values,
    defaults,
    load,
    parse_arg,
    resolve,
    unused_epochs,
)
from framework.config.sweep_space import Range, choice, integers, log_uniform, product, uniform, zipped

__all__ = [
    "EPOCH_KEYS",
    "FREE_SECTIONS",
    "MODES",
    "NAN_POLICIES",
    "PRECISIONS",
    "STRATEGIES",
    "ConfigError",
    "Range",
    "check_values",
    "choice",
    "defaults",
    "did_you_mean",
    "integers",
    "load",
    "log_uniform",
    "parse_arg",
    "product",
    "resolve",
    "uniform",
    "unused_epochs",
    "zipped",
]
