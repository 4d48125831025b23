"""``python -m antijanus.cpu --config <yaml> --train ...`` (see runner.py). Also run directly by
path: the ranks that Lightning starts re-run this file."""

import os
import sys

if not __package__:  # run by path: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from antijanus.cpu.runner import main  # noqa: E402

if __name__ == "__main__":
    main()
