"""The command line before absl parses it: one `--config`, and new `optimizer.options` keys.

* `last_config_only`: `scripts/train.sh` passes a default `--config=`; a user's
  `--config=` after it replaces it (absl's config flag cannot be given twice:
  each one defines its `--config.x` override flags again).
* `split_open_overrides`: `--config.optimizer.options.momentum=0.9` adds a key
  absl's config flags do not know (they exist only for the config's own keys).
  In a section open to the command line (`OPEN_SECTIONS`) such a flag is taken
  out of the command line and its value, typed from its text (int, float,
  bool, tuple, else str), set by `set_path` after parsing. Elsewhere an
  unknown key still fails, naming it.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import ml_collections

from framework import config as config_lib


def config_argument(argv: Sequence[str]) -> str | None:
    """The last `--config=` (or `--config <spec>`) value of `argv`; None when there is none."""
    found = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            found = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def last_config_only(argv: Sequence[str]) -> list[str]:
    """`argv` with every `--config=` but the last one removed (a later one replaces an earlier one)."""
    positions = []
    for i, arg in enumerate(argv):
        if i and arg.startswith("--config="):
            positions.append((i, 1))
        elif i and arg == "--config" and i + 1 < len(argv):
            positions.append((i, 2))
    dropped = {i + k for i, width in positions[:-1] for k in range(width)}
    return [arg for i, arg in enumerate(argv) if i not in dropped]


def override_paths(argv: Sequence[str]) -> list[str]:
    """The key paths of `argv`'s `--config.a.b=v` flags."""
    return [arg[len("--config.") :].split("=", 1)[0] for arg in argv[1:] if arg.startswith("--config.")]


# Free sections whose new keys a flag may add: their receiver checks the names (the optimizer's
# constructor refuses an unknown argument, naming it). `model`, `data` and `task` are free in a config
# file, but nothing would notice a misspelt flag there (`--config.model.hiden=8` would change nothing).
OPEN_SECTIONS = ("optimizer.options",)
assert set(OPEN_SECTIONS) <= set(config_lib.FREE_SECTIONS)


def in_open_section(path: str) -> bool:
    """Whether the key `path` (`"optimizer.options.momentum"`) lies inside a section of `OPEN_SECTIONS`."""
    return any(path.startswith(f"{section}.") for section in OPEN_SECTIONS)


def is_new_open_key(config: ml_collections.ConfigDict, path: str) -> bool:
    """Whether `path` names a key `config` lacks inside a section of `OPEN_SECTIONS` (which may add it)."""
    node, walked = config, []
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            return False
        if part not in node:
            return in_open_section(".".join([*walked, part]))
        node, walked = node[part], [*walked, part]
    return False


def typed(text: str) -> Any:
    """A flag's text as a value: `true`/`false` (any case), a Python int, float or tuple, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    if isinstance(value, list):
        value = tuple(value)
    return value if isinstance(value, (bool, int, float, tuple)) else text


def split_open_overrides(
    argv: Sequence[str], config: ml_collections.ConfigDict | None
) -> tuple[list[str], dict[str, Any]]:
    """Takes the flags that add a key to a section of `OPEN_SECTIONS` out of `argv`.

    Args:
      argv: the command line.
      config: the config the flags apply to (before overrides); None: nothing is taken out.

    Returns:
      The rest of `argv` (for absl), and path -> typed value of the flags taken out.
    """
    if config is None:
        return list(argv), {}
    rest, added = [], {}
    for i, arg in enumerate(argv):
        if i and arg.startswith("--config.") and "=" in arg:
            path, text = arg[len("--config.") :].split("=", 1)
            if is_new_open_key(config, path):
                added[path] = typed(text)
                continue
        rest.append(arg)
    return rest, added


def set_path(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    """Sets `config.<path>` to `value`, adding the key (and missing sections)."""
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        if part not in node:
            with node.unlocked():
                node[part] = ml_collections.ConfigDict()
        node = node[part]
    with node.unlocked():
        node[leaf] = value


def check_override(config: ml_collections.ConfigDict, path: str) -> None:
    """Raises ConfigError when `path` names no key of `config` (`optimizer.options` may gain new keys)."""
    if is_new_open_key(config, path):
        return
    node, walked = config, []
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            where = "config." + ".".join(walked) if walked else "config"
            raise config_lib.ConfigError(
                f"--config.{path}: {where} has no key {part!r}.{config_lib.did_you_mean(part, keys)}"
            )
        node, walked = node[part], walked + [part]
