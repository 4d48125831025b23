#!/usr/bin/env python
"""Run threestudio's own, unchanged ``launch.py`` on a CPU-only machine (antijanus.cpu).

From the threestudio folder, exactly like ``python launch.py``:

    python custom/antijanus/scripts/threestudio_cpu.py --config custom/antijanus/configs/perp-neg-nerf-sd.yaml \
        --train [--gpu 0,1] [--small] system.prompt_processor.prompt="a corgi"

The CPU overrides the config needs are derived from it and printed; ``--gpu 0,1`` runs two ranks
(DDP over gloo); ``--small`` adds smoke-run settings. See custom/antijanus/cpu/runner.py.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "custom"))

from antijanus.cpu import declare_torchvision_op_schemas, install_standins  # noqa: E402,F401
from antijanus.cpu.runner import main, patch_threestudio  # noqa: E402,F401

if __name__ == "__main__":
    main()
