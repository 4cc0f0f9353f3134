#!/usr/bin/env bash
# Set up .venv if needed, then run the default experiment. Extra flags pass
# through (later flags win): scripts/train.sh --config=configs/digits.py:smoke
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh examples
exec python experiments/digits.py --config=configs/digits.py --workdir=runs/digits "$@"
