"""Config files: `--config=path.py[:arg]` loaded as a module, whose `get_config(arg)` gives the config."""

from __future__ import annotations

import importlib.util
import os
import sys

from framework.config.errors import ConfigError


def load_module(spec: str, module_name: str = "_framework_config"):
    """The module of `path.py[:arg]` (a config file, or a one-file script) and its `arg`."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or not os.path.exists(path):
        raise ConfigError(f"--config={spec}: no such config file {path!r}.")
    module = importlib.util.module_from_spec(module_spec)
    directory = os.path.dirname(os.path.abspath(path))
    added = directory not in sys.path
    if added:  # a script imports its neighbours as it would when run
        sys.path.insert(0, directory)
    try:
        module_spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(directory)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(): give --config=<config file>.")
    return module, arg
