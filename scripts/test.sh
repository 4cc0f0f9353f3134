#!/usr/bin/env bash
# Set up .venv if needed, lint, build the docs (strict: a broken link or docstring fails), then run
# the test suite, which also runs the Python blocks of README.md and docs/. Extra args go to pytest.
# Test files run on TEST_WORKERS processes (pytest-xdist; default 2, one per core of a CI machine;
# 0: in this process). --dist loadfile keeps each file on one worker, so module fixtures run once;
# --no-loadscope-reorder keeps the collection order (tests/conftest.py: slow files first), so the
# longest file starts at once instead of last (xdist otherwise orders files by test count).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh test,docs
scripts/lint.sh
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
exec python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
