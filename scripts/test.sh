#!/usr/bin/env bash
# Set up .venv if needed, lint, then run the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh test
scripts/lint.sh
exec python -m pytest "$@"
