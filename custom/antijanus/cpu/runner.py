"""Run threestudio's own, unchanged ``launch.py`` on a CPU, one process or several.

    python custom/antijanus/scripts/threestudio_cpu.py --config <yaml> --train [--gpu 0,1]
        [--small] [--models DIR] [--verbose] [--no-auto-overrides] [--launch path/to/launch.py] [key=value ...]

Run it from the threestudio folder (the one holding ``launch.py`` and ``custom/``), exactly as
``python launch.py``; threestudio is imported from that folder (it is not pip-installed).
``--models DIR`` sets every model key of the config from local folders (``adapters/model_keys.py``);
each model is checked before anything trains. Known harmless third-party warnings are filtered
(``quiet.py``) unless ``--verbose``. At run time only (threestudio's files are not touched): the stand-ins and
torchvision schemas of ``imports.py``; ``Trainer(accelerator="gpu")`` -> ``accelerator="cpu"``
with as many processes as ``--gpu`` names (several: DDP over gloo); ``get_device()`` -> cpu;
nerfacc's CUDA kernels on the importance-estimator path -> ``nerfacc_kernels.py``; and the
overrides ``overrides.cpu_overrides`` derives from the config (printed before the run; your own
``key=value`` overrides come last and win).

Several processes: Lightning starts ranks 1.. by re-running ``sys.argv``; this runner keeps
itself as ``sys.argv[0]`` and hands launch.py's path to them in ``ANTIJANUS_CPU_LAUNCH``, so
every rank is patched the same way.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import List, Optional


import torch
import transformers

from .. import register_threestudio_modules
from ..utils.errors import ConfigError
from . import nerfacc_kernels
from .imports import prepare_threestudio_import
from .overrides import CPUUnsupported, cpu_overrides, load_merged_config
from .quiet import filter_known_warnings

LAUNCH_ENV = "ANTIJANUS_CPU_LAUNCH"  # launch.py, for ranks started by Lightning
APPLIED_ENV = "ANTIJANUS_CPU_OVERRIDES_APPLIED"  # ranks > 0 get the argv with the overrides in it
VERBOSE_ENV = "ANTIJANUS_CPU_VERBOSE"  # --verbose, for ranks started by Lightning
NO_THREESTUDIO = ("threestudio is not importable: run this from a threestudio checkout (the folder holding "
                  "launch.py and threestudio/), or pass --launch /path/to/threestudio/launch.py")
ENTRY_POINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")


def visible_devices() -> int:
    """How many processes launch.py asked for: it sets CUDA_VISIBLE_DEVICES from --gpu."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return max(1, len([d for d in value.split(",") if d.strip()]))


def patch_threestudio() -> None:
    """Point threestudio at the CPU (Trainer, get_device, nerfacc kernels)."""
    import nerfacc.volrend  # threestudio's dependency, after the stand-ins
    import pytorch_lightning  # threestudio's dependency, after the stand-ins
    import threestudio  # noqa: F401  (threestudio: imports every threestudio module)
    import threestudio.models.estimators as estimators  # threestudio

    cpu = lambda: torch.device("cpu")  # noqa: E731
    for name, module in list(sys.modules.items()):
        if name.startswith("threestudio") and hasattr(module, "get_device"):
            module.get_device = cpu
    nerfacc.volrend.pack_info = nerfacc_kernels.pack_info
    nerfacc.volrend.exclusive_sum = nerfacc_kernels.exclusive_sum
    nerfacc.volrend.exclusive_prod = nerfacc_kernels.exclusive_prod
    estimators.importance_sampling = nerfacc_kernels.importance_sampling

    load_t5_without_8bit()
    original_init = pytorch_lightning.Trainer.__init__
    if getattr(original_init, "_antijanus_cpu", False):
        return

    def cpu_trainer(self, *args, **kwargs):
        devices = visible_devices()
        kwargs.update(accelerator="cpu", devices=devices)
        if devices > 1:
            kwargs["strategy"] = "ddp"  # Lightning's CPU DDP: gloo process group
            # every rank on all cores would oversubscribe them; share the cores out instead
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // devices))
        original_init(self, *args, **kwargs)

    cpu_trainer._antijanus_cpu = True
    pytorch_lightning.Trainer.__init__ = cpu_trainer


def load_t5_without_8bit() -> None:
    """threestudio's ``deep-floyd-prompt-processor`` loads T5 with ``load_in_8bit=True,
    variant="8bit", device_map="auto"`` (bitsandbytes: CUDA only). On a CPU the same weights load
    in the dtype asked for instead (said once), so stock IF configs run unchanged."""
    cls = transformers.T5EncoderModel
    if getattr(cls.from_pretrained, "_antijanus_cpu", False):
        return
    original = cls.from_pretrained.__func__
    told = []

    def from_pretrained(klass, *args, **kwargs):
        if kwargs.get("load_in_8bit"):
            for key in ("load_in_8bit", "device_map"):
                kwargs.pop(key, None)
            if kwargs.get("variant") == "8bit":
                kwargs.pop("variant")
            if not told:
                told.append(True)
                print("[antijanus cpu] T5 loads without 8-bit quantisation (bitsandbytes needs CUDA)", flush=True)
        return original(klass, *args, **kwargs)

    from_pretrained._antijanus_cpu = True
    cls.from_pretrained = classmethod(from_pretrained)


def parse(argv: List[str]):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--launch", help="threestudio's launch.py (default: ./launch.py, else beside the package)")
    parser.add_argument("--small", action="store_true", help="smoke-run settings: 32x32, 16 samples per ray")
    parser.add_argument("--no-auto-overrides", action="store_true", help="apply no CPU overrides")
    parser.add_argument("--models", help="a folder of local model folders (sd/, if/, bert/, blip/): sets every "
                                         "model key of the config that has one")
    parser.add_argument("--verbose", action="store_true", help="show every warning (known harmless ones too)")
    parser.add_argument("--config")
    return parser.parse_known_args(argv)


def make_threestudio_importable(launch: Optional[str]) -> None:
    """threestudio is not pip-installed: ``python launch.py`` imports it from the launch folder.
    Do the same (the working folder, or --launch's), or stop with one line saying what to do."""
    if importlib.util.find_spec("threestudio") is not None:
        return
    folders = ([os.path.dirname(os.path.abspath(launch))] if launch else []) + [os.getcwd()]
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "threestudio", "__init__.py")):
            sys.path.insert(0, folder)
            return
    sys.exit(f"antijanus CPU runner: {NO_THREESTUDIO}")


def find_launch(given: Optional[str]) -> str:
    if given:
        return os.path.abspath(given)
    if os.environ.get(LAUNCH_ENV):
        return os.environ[LAUNCH_ENV]
    if os.path.isfile("launch.py"):
        return os.path.abspath("launch.py")
    import threestudio  # threestudio: where it is installed

    return os.path.join(os.path.dirname(os.path.dirname(threestudio.__file__)), "launch.py")


def main(argv: Optional[List[str]] = None) -> None:
    known, rest = parse(sys.argv[1:] if argv is None else argv)
    if known.verbose:
        os.environ[VERBOSE_ENV] = "1"
    if not os.environ.get(VERBOSE_ENV):
        filter_known_warnings()
    make_threestudio_importable(known.launch)
    prepare_threestudio_import()
    patch_threestudio()
    launch = find_launch(known.launch)
    launch_args = (["--config", known.config] if known.config else []) + rest

    overrides: List[str] = []
    if known.config and not os.environ.get(APPLIED_ENV):
        try:
            overrides = prepared_overrides(known, [a for a in rest if "=" in a and not a.startswith("-")])
        except ConfigError as error:  # e.g. an override that is not YAML: one line
            sys.exit(f"antijanus: {error}")
    os.environ[LAUNCH_ENV] = launch
    os.environ[APPLIED_ENV] = "1"
    # the overrides first, so that the user's own key=value (later on the command line) win
    sys.argv = [ENTRY_POINT] + _insert_overrides(launch_args, overrides)
    try:
        run_script(launch)
    except ConfigError as error:  # one line naming the key, not a traceback through launch.py
        sys.exit(f"antijanus: {error}")


def prepared_overrides(known, user: List[str]) -> List[str]:
    """The CPU overrides and --models' (each printed with its reason), after checking that every
    model of the resulting config can be loaded; stops with one line per problem otherwise."""
    _register_antijanus()
    from ..adapters.model_keys import models_overrides, unloadable_models  # threestudio: after the stand-ins

    overrides, reasons = [], []
    if not known.no_auto_overrides:
        try:
            overrides, reasons = cpu_overrides(known.config, user, small=known.small)
        except CPUUnsupported as error:
            sys.exit(f"antijanus CPU runner: {error}")
    if known.models:
        try:
            found, lines = models_overrides(load_merged_config(known.config, user), known.models)
        except FileNotFoundError as error:
            sys.exit(f"antijanus CPU runner: {error}")
        overrides, reasons = overrides + found, reasons + lines
    for line in reasons:
        print(f"[antijanus cpu] {line}", flush=True)
    problems = unloadable_models(load_merged_config(known.config, overrides + user))
    if problems:
        sys.exit("antijanus: a model cannot be loaded, nothing was trained:\n  " + "\n  ".join(problems))
    return overrides


def run_script(path: str) -> None:
    """Execute ``path`` as ``python path`` would (its folder first on sys.path), but leave
    ``sys.argv[0]`` alone: ``runpy.run_path`` would set it to ``path``, and Lightning starts the
    other ranks by re-running ``sys.argv``, which must name this runner, not launch.py."""
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})


def _insert_overrides(args: List[str], overrides: List[str]) -> List[str]:
    """launch.py takes flags then key=value extras; put ours before the first user extra."""
    first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
    return args[:first] + overrides + args[first:]


def _register_antijanus() -> None:
    """Our registered module types, so that their config keys are known to the overrides (a
    threestudio too old for them is said here, clearly, as the launcher would say it)."""
    register_threestudio_modules()
