"""`ConfigError` and the "did you mean" hint that config messages share (re-exported by `framework.config`)."""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A config key or value the framework cannot use."""


def did_you_mean(name: str, valid: list[str]) -> str:
    """A message tail for an unknown key: the closest valid keys, then all of them.

    Args:
      name: the unknown key.
      valid: the keys that exist where `name` was looked up.

    Returns:
      `" Did you mean 'x'? Valid keys here: a, b, x."` (the first sentence only
      when some valid key is close to `name`).
    """
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Valid keys here: {', '.join(sorted(valid))}."
