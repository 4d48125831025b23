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


def _is_other_copy(module) -> bool:
    """A module of an antijanus package that lives somewhere else (another clone or install)."""
    path = getattr(module, "__file__", None)
    inside = os.path.realpath(os.path.join(_SOURCE, "antijanus")) + os.sep
    return path is not None and not os.path.realpath(path).startswith(inside)


def _load_package():
    this = sys.modules.get(__name__)
    if sys.modules.get("antijanus") is this:  # the launcher registered this file as `antijanus`
        del sys.modules["antijanus"]
    # one whole copy: modules already imported from another copy must not mix with this one's
    for name in [n for n, m in sys.modules.items() if (n == "antijanus" or n.startswith("antijanus."))
                 and m is not this and _is_other_copy(m)]:
        del sys.modules[name]
    if _SOURCE not in sys.path:
        sys.path.insert(0, _SOURCE)  # this clone's package wins over another installed copy
    package = importlib.import_module("antijanus")
    if "threestudio" in sys.modules:
        package.register_threestudio_modules()
    return package


if os.path.isfile(os.path.join(_SOURCE, "antijanus", "__init__.py")):
    _package = _load_package()
    __version__ = _package.__version__
