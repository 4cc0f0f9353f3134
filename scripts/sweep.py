"""Runs a config's sweep, one process per point: `framework.sweeps.sweep_command` (also `framework-sweep`).

python scripts/sweep.py experiments/digits.py --config=configs/digits.py --workdir=runs/digits-sweep
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from framework.sweeps.sweep_command import console_main  # noqa: E402

if __name__ == "__main__":
    console_main()
