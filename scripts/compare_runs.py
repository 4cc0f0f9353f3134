"""Compares runs: a table of their final `val/` metrics and an overlay plot: `framework.sweeps.compare`.

python scripts/compare_runs.py runs/digits-sweep/*/ --out compare.png   # or: framework-compare ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from framework.sweeps.compare import main  # noqa: E402

if __name__ == "__main__":
    main()
