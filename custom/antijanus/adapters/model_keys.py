"""Running without the model hub: which keys of a config name a model, setting them all from one
folder of local models (the CPU mode's ``--models DIR``), and checking every one before training
starts (the CPU mode, and ``launch.py --train`` through ``check_launch_command``).

``DIR`` holds folders in the real diffusers / transformers layouts, named as
``scripts/make_tiny_models.py DIR`` writes them (tiny random weights for smoke runs) or as you put
real checkpoints there: ``sd`` (Stable Diffusion), ``if`` (DeepFloyd IF stage I), ``bert`` (the
masked LM of prompt debiasing), ``blip`` (the DNP captioner).
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional, Tuple

import huggingface_hub
from omegaconf import DictConfig, OmegaConf

from ..utils.loading import is_local_folder, looks_local
from ..utils.config_defaults import module_defaults

GUIDANCE_PATH = "system.guidance.pretrained_model_name_or_path"
PROCESSOR_PATH = "system.prompt_processor.pretrained_model_name_or_path"
#: VSD's LoRA branch model (ours and threestudio's VSD guidance): a Stable Diffusion folder
LORA_PATH = "system.guidance.pretrained_model_name_or_path_lora"
VSD_GUIDANCES = ("perp-neg-vsd-guidance", "stable-diffusion-vsd-guidance")
#: processor type -> (its model key, the folder name in DIR, (the key that switches it on, the value))
PROCESSOR_MODELS = {
    "bert-pmi-prompt-processor": ("debias_model", "bert", ("use_prompt_debiasing", True)),
    "bert-pmi-deep-floyd-prompt-processor": ("debias_model", "bert", ("use_prompt_debiasing", True)),
    "dnp-prompt-processor": ("captioner", "blip", ("negative_prompt", "auto")),
}


def _value(cfg: DictConfig, key: str, type_key: str) -> Optional[str]:
    """The key's value in the config (interpolations resolved), else its module's default."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        value = module_defaults(OmegaConf.select(cfg, type_key, default=None)).get(key.rsplit(".", 1)[-1])
    return None if value is None else str(value)


def diffusion_folder(value: Optional[str], module_type: Optional[str]) -> str:
    """'if' for a DeepFloyd IF model or module, else 'sd'."""
    text = f"{value or ''} {module_type or ''}".lower()
    return "if" if ("deepfloyd" in text or "deep-floyd" in text or "if-i-" in text) else "sd"


def model_keys(cfg: DictConfig) -> Dict[str, Tuple[Optional[str], str]]:
    """Every model key the config's modules have: full key -> (value, folder name in DIR)."""
    keys: Dict[str, Tuple[Optional[str], str]] = {}
    for key, type_key in ((GUIDANCE_PATH, "system.guidance_type"), (PROCESSOR_PATH, "system.prompt_processor_type")):
        module_type = OmegaConf.select(cfg, type_key, default=None)
        if module_type is not None:
            value = _value(cfg, key, type_key)
            keys[key] = (value, diffusion_folder(value, module_type))
    if OmegaConf.select(cfg, "system.guidance_type", default=None) in VSD_GUIDANCES:
        keys[LORA_PATH] = (_value(cfg, LORA_PATH, "system.guidance_type"), "sd")
    processor = OmegaConf.select(cfg, "system.prompt_processor_type", default=None)
    if processor in PROCESSOR_MODELS:
        name, folder, (switch, on) = PROCESSOR_MODELS[processor]
        used = _value(cfg, f"system.prompt_processor.{switch}", "system.prompt_processor_type")
        if str(used).strip().lower() == str(on).lower():  # a model the run loads
            key = f"system.prompt_processor.{name}"
            keys[key] = (_value(cfg, key, "system.prompt_processor_type"), folder)
    return keys


def models_overrides(cfg: DictConfig, models_dir: str) -> Tuple[List[str], List[str]]:
    """(overrides, lines): each model key whose folder exists in ``models_dir`` set to it."""
    if not os.path.isdir(models_dir):
        raise FileNotFoundError(f"--models {models_dir}: no such folder (make one with "
                                "scripts/make_tiny_models.py DIR, or put model folders named sd/ if/ bert/ blip/ in it)")
    out, lines = [], []
    for key, (value, folder) in model_keys(cfg).items():
        path = os.path.abspath(os.path.join(models_dir, folder))
        if os.path.isdir(path):
            out.append(f"{key}={path}")
            lines.append(f"{key}={path}: --models")
        else:
            lines.append(f"{key} stays {value!r}: --models {models_dir} has no {folder}/ folder")
    return out, lines


def unloadable_models(cfg: DictConfig) -> List[str]:
    """One line per model key whose value can be loaded neither from a folder nor from the hub
    (or its cache): the key, the value and what to do."""
    problems = []
    for key, (value, folder) in model_keys(cfg).items():
        reason = _unloadable(value)
        if reason:
            problems.append(f"{key}={value!r}: {reason}. Give a local folder: {key}=/path/to/{folder}, or "
                            f"--models DIR with DIR/{folder} (README: 'Without the model hub')")
    return problems


def _unloadable(value: Optional[str]) -> Optional[str]:
    if not value:
        return "no model named"
    if is_local_folder(value):
        return None
    if looks_local(value) or value.count("/") > 1:  # a hub id is "org/name"
        return "no such folder"
    return _hub_problem(value)


def _hub_problem(repo_id: str) -> Optional[str]:
    """Why ``repo_id`` cannot come from the hub now (None if it is cached or the hub answers)."""
    try:
        huggingface_hub.snapshot_download(repo_id, local_files_only=True)
        return None
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "not a local folder, not in the hub cache, and HF_HUB_OFFLINE is set"
    try:
        huggingface_hub.model_info(repo_id, timeout=10)
        return None
    except Exception as error:  # no network, unknown id, gated
        return f"not a local folder, and the model hub cannot give it ({type(error).__name__})"


def check_launch_command(argv: List[str]) -> None:
    """Under ``python launch.py --config <yaml> --train [key=value ...]`` (threestudio loads this
    plugin before it reads the config): every model of the config checked first; one message per
    unloadable model and exit 2, before anything loads or trains."""
    if not argv or os.path.basename(argv[0]) != "launch.py" or "--train" not in argv or "--config" not in argv:
        return
    config = argv[argv.index("--config") + 1]
    extras = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    try:
        cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_cli(extras))
    except Exception:  # launch.py itself reports a config it cannot read
        return
    problems = unloadable_models(cfg)
    if problems:
        print("antijanus: a model cannot be loaded, nothing was trained:\n  " + "\n  ".join(problems),
              file=sys.stderr, flush=True)
        raise SystemExit(2)

