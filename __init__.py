"""threestudio extension entry point, for ``cd threestudio/custom && git clone <repo> antijanus``.

threestudio's launch.py imports every folder under ``custom/`` through its ``__init__.py``, under
the folder's name. The package itself lives in ``custom/antijanus/`` inside this repository (so
that ``pip install -e .`` and the symlink way work too); this file makes that package the one
imported as ``antijanus`` (an installed copy of this same package is fine too), which checks
threestudio's version and registers the modules. Importing it twice is safe.
"""

import importlib
import os
import sys

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "custom")


def _load_package():
    this = sys.modules.get(__name__)
    if sys.modules.get("antijanus") is this:  # the launcher registered this file as `antijanus`
        del sys.modules["antijanus"]
    if _SOURCE not in sys.path:
        sys.path.insert(0, _SOURCE)  # this clone's package wins over another installed copy
    package = importlib.import_module("antijanus")
    if "threestudio" in sys.modules:
        package.register_threestudio_modules()
    return package


if os.path.isfile(os.path.join(_SOURCE, "antijanus", "__init__.py")):
    _package = _load_package()
    __version__ = _package.__version__
