#!/usr/bin/env bash
# ruff format check + lint over the project's Python. Pass --fix to rewrite in place.
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF="${RUFF:-ruff}"
common=(--line-length 110 --target-version py310)
rules=(--select E,F,W,I,B,UP,SIM --ignore B905,SIM108,E501
       --config "lint.isort.known-first-party = ['framework']" --config "src = ['.', 'experiments']"
       --config "lint.isort.known-local-folder = ['toys', 'conftest']")
paths=(framework experiments configs tests scripts)
if [[ "${1:-}" == "--fix" ]]; then
  "$RUFF" check --fix "${common[@]}" "${rules[@]}" "${paths[@]}"
  "$RUFF" format "${common[@]}" "${paths[@]}"
else
  "$RUFF" check "${common[@]}" "${rules[@]}" "${paths[@]}"
  "$RUFF" format --check "${common[@]}" "${paths[@]}"
fi
