"""Plots loss and metric curves of runs into a PNG: `framework.sweeps.run_plot`.

python scripts/plot_run.py runs/imbalanced_bce runs/imbalanced_focal --out compare.png
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from framework.sweeps.run_plot import main  # noqa: E402

if __name__ == "__main__":
    main()
