"""Where the lab finds its files, without climbing out of its own package.

* The trained models: ``models/`` inside this package (``prior``, ``mlm``, ``judge``,
  ``captioner`` and archived versions), installed with it as package data;
  ``JANUS_LAB_MODELS`` names another folder of the same layout.
* The lab's sweep files: ``configs/`` inside this package.
* The plugin's shipped configs, which the lab's variants run unchanged: ``ANTIJANUS_CONFIGS``, or
  the ``configs/`` folder of the antijanus checkout the plugin is imported from.
"""

from __future__ import annotations

import os

import antijanus
from antijanus.utils.errors import ConfigError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
MODELS_ENV = "JANUS_LAB_MODELS"
CONFIGS_ENV = "ANTIJANUS_CONFIGS"
SWEEP_CONFIG_DIR = os.path.join(PACKAGE_DIR, "configs")


def lab_root() -> str:
    """The folder holding the lab's model folders."""
    if "ANTIJANUS_LAB_MODELS" in os.environ and MODELS_ENV not in os.environ:
        raise ConfigError("ANTIJANUS_LAB_MODELS", os.environ["ANTIJANUS_LAB_MODELS"],
                          f"the variable was renamed: set {MODELS_ENV} instead")
    return os.path.normpath(os.environ.get(MODELS_ENV, os.path.join(PACKAGE_DIR, "models")))


def plugin_config_dir() -> str:
    """The plugin's shipped configs (perp-neg-nerf-sd.yaml, ...)."""
    if CONFIGS_ENV in os.environ:
        return os.path.normpath(os.environ[CONFIGS_ENV])
    package = os.path.dirname(os.path.abspath(antijanus.__file__))
    checkout = os.path.normpath(os.path.join(package, "..", "..", "configs"))
    if not os.path.isfile(os.path.join(checkout, "perp-neg-nerf-sd.yaml")):
        raise ConfigError(CONFIGS_ENV, None, "the folder of antijanus's shipped configs (antijanus is not "
                                             f"imported from a checkout: {package})")
    return checkout
