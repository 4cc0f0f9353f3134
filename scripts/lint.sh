#!/usr/bin/env bash
# ruff lint + format check over the project's Python (settings: pyproject.toml). --fix rewrites in place.
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF="${RUFF:-ruff}"
paths=(framework experiments configs tests scripts conftest.py)
if [[ "${1:-}" == "--fix" ]]; then
  "$RUFF" check --fix "${paths[@]}"
  "$RUFF" format "${paths[@]}"
else
  "$RUFF" check "${paths[@]}"
  "$RUFF" format --check "${paths[@]}"
fi
