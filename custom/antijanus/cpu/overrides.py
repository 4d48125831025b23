"""The overrides that make a threestudio config run on a CPU, derived from the config itself.

Only what a CPU cannot run is changed, and only where the config's modules have that key:

- tiny-cuda-nn encodings / networks (hash grids, spherical harmonics, FullyFusedMLP) anywhere in
  ``system`` -> ``ProgressiveBandFrequency`` / ``VanillaMLP`` (threestudio's pure-PyTorch ones);
- nerfacc's occupancy-grid / proposal estimators (CUDA kernels) -> the ``importance`` estimator,
  with finite near/far planes around the camera range (without them every loss is NaN);
- fp16 / 16-mixed -> fp32 (``trainer.precision``, ``half_precision_weights``), no xformers, no
  spawned text-encoder process.

``small=True`` adds smoke-run settings (32x32 renders, 16 samples per ray, 2 test views), only
for the keys the data module and renderer actually have. Configs that need CUDA for something
with no CPU replacement (mesh rasterisation with nvdiffrast) raise ``CPUUnsupported``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf

from ..utils.config_defaults import module_defaults
from ..utils.errors import ConfigError

PURE_TORCH_ENCODINGS = ("ProgressiveBandFrequency",)
PURE_TORCH_NETWORKS = ("VanillaMLP", "SphereInitVanillaMLP")
ESTIMATORS_ON_CPU = ("importance",)
#: renderer type -> why it cannot run on a CPU
GPU_ONLY_RENDERERS = {
    "nvdiff-rasterizer": "rasterises meshes with nvdiffrast (CUDA/OpenGL)",
}
#: data module type -> why it cannot run on a CPU
GPU_ONLY_DATA = {
    "single-image-datamodule": "puts its tensors on cuda:<rank> (`.to(self.rank)`)",
}
SMALL_RESOLUTION = 32


class CPUUnsupported(RuntimeError):
    """The config needs CUDA for something that has no CPU replacement."""


def load_merged_config(config_path: str, cli_overrides: Sequence[str] = ()) -> DictConfig:
    """The YAML with the command-line overrides merged in, interpolations left unresolved; an
    override whose value is not YAML is a ConfigError naming it (e.g. an unquoted ``{...}``)."""
    for override in cli_overrides:
        try:
            OmegaConf.from_cli([override])
        except yaml.YAMLError as error:
            key, _, value = override.partition("=")
            raise ConfigError(key, value, f"not a YAML value ({str(error).splitlines()[0]}); quote it: "
                                          f"{key}='\"{value}\"'") from None
    cfg = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_cli(list(cli_overrides)))
    assert isinstance(cfg, DictConfig)
    return cfg


def _config_fields(type_name: Any) -> Optional[Set[str]]:
    """Field names of a registered threestudio module's Config (None if unknown)."""
    threestudio = sys.modules.get("threestudio")
    if threestudio is None or not isinstance(type_name, str):
        return None
    try:
        cls = threestudio.find(type_name)
    except Exception:
        return None
    config = getattr(cls, "Config", None)
    return {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else None


def _data_fields(type_name: Any) -> Optional[Set[str]]:
    """Field names of a data module's config dataclass (threestudio keeps it beside the class)."""
    threestudio = sys.modules.get("threestudio")
    if threestudio is None or not isinstance(type_name, str):
        return None
    try:
        module = sys.modules[threestudio.find(type_name).__module__]
    except Exception:
        return None
    configs = [v for v in vars(module).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
               and v.__name__.endswith("DataModuleConfig")]
    return {f.name for f in dataclasses.fields(configs[0])} if len(configs) == 1 else None


def _merge(base: Any, top: Any) -> Any:
    """``top`` over ``base``, recursively for mappings."""
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in top.items()}}
    return top if top is not None else base


def _with_module_defaults(system: Dict) -> Dict:
    """Each ``<part>_type`` module's config with its class defaults filled in, since keys the
    YAML leaves out (e.g. the background's spherical-harmonics encoding) matter as much."""
    full = dict(system)
    for key, type_name in system.items():
        if key.endswith("_type"):
            part = key[: -len("_type")]
            full[part] = _merge(module_defaults(type_name), system.get(part) or {})
    return full


def _has(node: Any, fields: Optional[Set[str]], key: str) -> bool:
    return (isinstance(node, dict) and key in node) or (fields is not None and key in fields)


def _walk(node: Any, path: str):
    """(dotted path, dict) of every mapping in a plain container."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}.{i}")


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) else default


def _near_far(data: Dict, system: Dict) -> Tuple[float, float]:
    """Planes enclosing the scene box ([-r, r]^3) from every camera distance the data uses."""
    distances: List[float] = []
    for key in ("camera_distance_range", "eval_camera_distance", "default_camera_distance"):
        value = data.get(key)
        values = value if isinstance(value, list) else [value]
        distances += [float(v) for v in values if isinstance(v, (int, float))]
    if not distances:
        distances = [1.0, 1.5]  # RandomCameraDataModuleConfig's defaults
    reach = math.sqrt(3.0) * _number(system.get("geometry", {}).get("radius"), 1.0)
    return round(max(0.05, min(distances) - reach), 3), round(max(distances) + reach, 3)


class _Overrides:
    """``key=value`` strings for launch.py and one line per change with its reason."""

    def __init__(self) -> None:
        self.out: List[str] = []
        self.why: List[str] = []

    def put(self, key: str, value: Any, reason: str) -> None:
        text = "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, list) else (
            str(value).lower() if isinstance(value, bool) else str(value))
        self.out.append(f"{key}={text}")
        self.why.append(f"{key}={text}: {reason}")


def cpu_overrides(config_path: str, cli_overrides: Sequence[str] = (), small: bool = False
                  ) -> Tuple[List[str], List[str]]:
    """(overrides, reasons): ``key=value`` strings for launch.py and one line per change."""
    cfg = OmegaConf.to_container(load_merged_config(config_path, cli_overrides), resolve=False)
    system, data = cfg.get("system", {}) or {}, cfg.get("data", {}) or {}
    found = _Overrides()
    if cfg.get("data_type") in GPU_ONLY_DATA:
        raise CPUUnsupported(f"data_type={cfg['data_type']} {GPU_ONLY_DATA[cfg['data_type']]}: "
                             "this config runs on a GPU only")
    precision = str((cfg.get("trainer") or {}).get("precision", 32))
    if "16" in precision:
        found.put("trainer.precision", 32, f"{precision} needs a GPU")
    renderer_type, renderer, renderer_key, renderer_fields = _renderer(system)
    full_system = _with_module_defaults(system)
    _encodings(full_system, found)
    _renderer_overrides(renderer_type, renderer, renderer_key, renderer_fields, data, system, small, found)
    _precision_and_processes(system, found)
    if small:
        _small_data(cfg.get("data_type"), data, found)
    return found.out, found.why


def _renderer(system: Dict) -> Tuple[Any, Dict, str, Optional[Set[str]]]:
    """The renderer's type, block, config key and fields (a patch renderer's base renderer)."""
    renderer_type = system.get("renderer_type")
    renderer = system.get("renderer") or {}
    renderer_key, renderer_fields = "system.renderer", _config_fields(renderer_type)
    if renderer_type == "patch-renderer":
        renderer_type = renderer.get("base_renderer_type")
        renderer, renderer_key = renderer.get("base_renderer") or {}, "system.renderer.base_renderer"
        renderer_fields = _config_fields(renderer_type)
    if renderer_type in GPU_ONLY_RENDERERS:
        raise CPUUnsupported(f"system.renderer_type={renderer_type} {GPU_ONLY_RENDERERS[renderer_type]}: "
                             "this config runs on a GPU only")
    return renderer_type, renderer, renderer_key, renderer_fields


def _encodings(full_system: Dict, found: _Overrides) -> None:
    """tiny-cuda-nn encodings and networks -> threestudio's pure-PyTorch ones."""
    for path, node in _walk(full_system, "system"):
        otype = node.get("otype")
        if not isinstance(otype, str):
            continue
        name = path.rsplit(".", 1)[-1]
        if name.endswith("encoding_config") and otype not in PURE_TORCH_ENCODINGS:
            found.put(f"{path}.otype", "ProgressiveBandFrequency", f"{otype} needs tiny-cuda-nn (CUDA)")
            found.put(f"{path}.n_frequencies", 2 if name.startswith("dir") else 4, "pure-PyTorch encoding")
        elif name.endswith("network_config") and otype not in PURE_TORCH_NETWORKS:
            found.put(f"{path}.otype", "VanillaMLP", f"{otype} needs tiny-cuda-nn (CUDA)")
    geometry = full_system.get("geometry") or {}
    if geometry.get("finite_difference_normal_eps") == "progressive" and \
            (geometry.get("pos_encoding_config") or {}).get("otype") not in PURE_TORCH_ENCODINGS:
        found.put("system.geometry.finite_difference_normal_eps", 0.01,
                  "'progressive' follows the hash grid's levels; 0.01 is threestudio's default")


def _renderer_overrides(renderer_type, renderer: Dict, renderer_key: str, renderer_fields, data: Dict,
                        system: Dict, small: bool, found: _Overrides) -> None:
    """nerfacc's CUDA estimators -> importance sampling between finite planes."""
    if not _has(renderer, renderer_fields, "estimator"):
        return
    estimator = renderer.get("estimator", "occgrid")
    if estimator not in ESTIMATORS_ON_CPU and renderer_type == "neus-volume-renderer" and \
            not renderer.get("use_volsdf", False):
        raise CPUUnsupported(f"{renderer_key}.estimator={estimator}: nerfacc's {estimator} estimator needs "
                             "CUDA, and the NeuS renderer samples by importance only with use_volsdf: true "
                             "(another density): this config runs on a GPU only")
    if estimator not in ESTIMATORS_ON_CPU:
        found.put(f"{renderer_key}.estimator", "importance", f"nerfacc's {estimator} estimator needs CUDA")
    if _has(renderer, renderer_fields, "near_plane") and not renderer.get("near_plane") and \
            _number(renderer.get("far_plane"), 1e10) >= 1e9:
        near, far = _near_far(data, system)
        found.put(f"{renderer_key}.near_plane", near, "the importance estimator needs finite planes")
        found.put(f"{renderer_key}.far_plane", far, "(scene box seen from the camera distances)")
    if small and _has(renderer, renderer_fields, "num_samples_per_ray"):
        found.put(f"{renderer_key}.num_samples_per_ray", 16, "small run")


def _precision_and_processes(system: Dict, found: _Overrides) -> None:
    """fp16 weights, xformers and spawned text-encoder processes need a GPU."""
    for module in ("guidance", "prompt_processor"):
        node = system.get(module) or {}
        fields = _config_fields(system.get(f"{module}_type"))
        if _has(node, fields, "half_precision_weights") and node.get("half_precision_weights", True) is not False:
            found.put(f"system.{module}.half_precision_weights", False, "fp16 weights need a GPU")
        if node.get("enable_memory_efficient_attention"):
            found.put(f"system.{module}.enable_memory_efficient_attention", False, "xformers needs CUDA")
        if _has(node, fields, "spawn") and node.get("spawn", True) is not False:
            found.put(f"system.{module}.spawn", False, "no spawned text-encoder process on a CPU")


def _small_data(data_type: Any, data: Dict, found: _Overrides) -> None:
    """Smoke-run settings, only for the keys the data module has."""
    fields = _data_fields(data_type)
    for key in ("width", "height"):
        value = data.get(key, 64)
        if _has(data, fields, key):
            found.put(f"data.{key}", [SMALL_RESOLUTION] * len(value) if isinstance(value, list)
                      else SMALL_RESOLUTION, "small run")
    for key in ("eval_width", "eval_height"):
        if _has(data, fields, key):
            found.put(f"data.{key}", SMALL_RESOLUTION, "small run")
    if _has(data, fields, "n_test_views"):
        found.put("data.n_test_views", 2, "small run")
