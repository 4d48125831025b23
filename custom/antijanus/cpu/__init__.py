"""threestudio on a CPU-only machine, for users and tests; no threestudio file is changed.

In your own script, before importing threestudio::

    from antijanus.cpu import prepare_threestudio_import
    prepare_threestudio_import()   # import-only stand-ins + torchvision op schemas
    import threestudio

To train: ``python custom/antijanus/scripts/threestudio_cpu.py --config <yaml> --train`` from the
threestudio folder (runner.py), which also applies the CPU overrides of ``overrides.py``.
This part imports threestudio only inside functions, after the stand-ins are in place.
"""

from .imports import declare_torchvision_op_schemas, install_standins, prepare_threestudio_import  # noqa: F401
from .overrides import CPUUnsupported, cpu_overrides  # noqa: F401
