"""The sweep file: its keys checked when it is loaded, and the runs it describes.

A sweep file (YAML)::

    name: janus-ablation
    config: configs/perp-neg-nerf-sd.yaml      # default config of every variant
    launch: ["python", "launch.py"]            # run from the threestudio checkout (or the CPU runner)
    out: outputs/sweeps                        # runs go to <out>/<name>/runs/<name>/<tag>
    overrides: [trainer.max_steps=10000]       # for every run
    variants:                                  # name -> overrides, optionally its own config
      baseline: {overrides: [system.prompt_processor.use_perp_neg=false]}
      perp-neg: {}
      dsds: {config: configs/dsds-nerf-sd.yaml}
      latent:                                  # replace: a block swapped whole (an override merges)
        overrides: [system_type=latentnerf-system]
        replace: {system.material: {n_output_dims: 4, color_activation: none}}
    prompts: ["a DSLR photo of a corgi", "a zoomed out DSLR photo of a lion"]
    seeds: [0, 1, 2]
    metrics:                                   # optional: view-consistency metrics of every run
      n_views: 100                             # (antijanus.tools.evaluate.MetricSettings keys)
      distractors: ["a cat", "a car"]
      lpips_backbone: /models/vgg16-397923af.pth
      lpips_lin: /models/lpips/vgg.pth

Each run is `launch --config C --train name=<sweep> tag=<variant>--<prompt>--s<seed>
use_timestamp=false exp_root_dir=... seed=S system.prompt_processor.prompt=P <overrides>`.

``replace`` (sweep-wide or per variant) maps a config key to a value that replaces the key's whole
value, where a command-line override would merge into it (a material block of other keys, say).
A variant with replacements runs from its derived config, ``<out>/<name>/configs/<variant>.yaml``
(the variant's config with the blocks replaced, interpolations kept), written before the runs.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from omegaconf import OmegaConf

from ...utils.cache import atomic_write
from ...utils.errors import ConfigError
from ...utils.naming import slug
from ..evaluate import MetricSettings

DONE_MARKER = ".antijanus-done"  # written into a run folder once its training finished
TAG_PROMPT_CHARS = 60  # the prompt's share of a run tag (its slug, cut to this length)
SWEEP_KEYS = ("name", "config", "launch", "out", "overrides", "variants", "prompts", "seeds", "metrics",
              "replace")
VARIANT_KEYS = ("config", "overrides", "replace")
NAME = r"[\w.-]+"  # sweep and variant names: letters, digits, '.', '_', '-'


@dataclass(frozen=True)
class Run:
    variant: str
    prompt: str
    seed: int
    config: str
    overrides: tuple
    tag: str
    run_dir: str

    def command(self, launch: Sequence[str], sweep_name: str, exp_root: str) -> List[str]:
        return list(launch) + [
            "--config", self.config, "--train", f"name={sweep_name}", f"tag={self.tag}",
            "use_timestamp=false", f"exp_root_dir={exp_root}", f"seed={self.seed}",
            f"system.prompt_processor.prompt={self.prompt}", *self.overrides,
        ]

    @property
    def done(self) -> bool:
        return os.path.exists(os.path.join(self.run_dir, DONE_MARKER))


@dataclass
class Sweep:
    name: str
    config: Optional[str]
    launch: List[str]
    out: str
    overrides: List[str] = field(default_factory=list)
    variants: Dict[str, Dict] = field(default_factory=dict)
    prompts: List[str] = field(default_factory=list)
    seeds: List[int] = field(default_factory=lambda: [0])
    metrics: Optional[MetricSettings] = None

    @classmethod
    def load(cls, path: str) -> "Sweep":
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        return cls.from_dict(data, os.path.dirname(os.path.abspath(path)))

    @classmethod
    def from_dict(cls, data: Mapping, base_dir: str = ".") -> "Sweep":
        """The sweep of a parsed sweep file; relative paths are relative to ``base_dir``."""
        if not isinstance(data, Mapping):
            raise ConfigError("sweep", data, "a sweep file is a mapping of keys (name, config, variants, ...)")
        unknown = sorted(set(data) - set(SWEEP_KEYS))
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]], "unknown sweep key", sorted(SWEEP_KEYS))
        name = str(data.get("name") or "")
        if not re.fullmatch(NAME, name):
            raise ConfigError("name", name, "must be a non-empty name of letters, digits, '.', '_', '-'")
        prompts = string_list("prompts", data.get("prompts"), 'e.g. ["a DSLR photo of a corgi"]')
        if not prompts or any(not p.strip() for p in prompts):
            raise ConfigError("prompts", prompts, "needs at least one non-empty prompt")
        seeds = integer_list("seeds", data.get("seeds", [0]))
        if not seeds:
            raise ConfigError("seeds", seeds, "needs at least one seed")
        variants = data.get("variants") or {"default": {}}
        if not isinstance(variants, Mapping):
            raise ConfigError("variants", variants, "maps variant names to {config, overrides}, e.g. "
                              "{baseline: {overrides: [system.prompt_processor.use_perp_neg=false]}, perp-neg: {}}")
        launch = launch_command(data.get("launch"))
        config = data.get("config")
        if config is not None and not isinstance(config, str):
            raise ConfigError("config", config, "must be the path of a threestudio config file")

        def resolve(path):
            return path if path is None or os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))

        checked = {str(v): check_variant(str(v), spec, config, data.get("replace"), resolve)
                   for v, spec in variants.items()}
        metrics = data.get("metrics")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise ConfigError("metrics", metrics, "a mapping of metrics keys (n_views, distractors, ...)")
        return cls(name=name, config=resolve(config), launch=launch,
                   out=resolve(data.get("out") or "outputs/sweeps"),
                   overrides=override_list("overrides", data.get("overrides")),
                   variants=checked, prompts=prompts, seeds=seeds,
                   metrics=None if metrics is None else MetricSettings.from_dict(metrics))

    @property
    def exp_root(self) -> str:
        return os.path.join(self.out, self.name, "runs")

    def runs(self) -> List[Run]:
        """Every (variant, prompt, seed) run, in a stable order."""
        runs = []
        for variant, spec in self.variants.items():
            for prompt in self.prompts:
                for seed in self.seeds:
                    tag = f"{variant}--{slug(prompt, TAG_PROMPT_CHARS)}--s{seed}"
                    config = self.derived_config(variant) if spec.get("replace") else spec["config"]
                    runs.append(Run(variant, prompt, seed, config,
                                    tuple(self.overrides + spec["overrides"]), tag,
                                    os.path.join(self.exp_root, self.name, tag)))
        return runs

    def derived_config(self, variant: str) -> str:
        """Where a variant with replacements gets its config (written by write_derived_configs)."""
        return os.path.join(self.out, self.name, "configs", f"{variant}.yaml")

    def write_derived_configs(self) -> List[str]:
        """Each variant with replacements: its config with those keys' values replaced whole
        (interpolations kept, comments dropped), written atomically where its runs read it."""
        written = []
        for variant, spec in self.variants.items():
            if not spec.get("replace"):
                continue
            cfg = OmegaConf.load(spec["config"])
            for key, value in spec["replace"].items():
                OmegaConf.update(cfg, key, value, merge=False)
            path = self.derived_config(variant)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            text = f"# {spec['config']} with {', '.join(spec['replace'])} replaced (sweep {self.name})\n"
            text += OmegaConf.to_yaml(cfg)
            atomic_write(path, lambda f: f.write(text))
            written.append(path)
        return written


def check_variant(name: str, spec, default_config: Optional[str], shared_replace,
                  resolve: Callable[[Optional[str]], Optional[str]]) -> Dict:
    """One entry of ``variants``, checked: {config (resolved, existing), overrides, replace (the
    sweep-wide ``shared_replace``, then the variant's own)}."""
    key = f"variants.{name}"
    if spec is not None and not isinstance(spec, Mapping):
        raise ConfigError(key, spec, "a variant is a mapping with `config` and/or "
                          "`overrides`, e.g. {overrides: [system.prompt_processor.use_perp_neg=false]}")
    spec = dict(spec or {})
    bad = sorted(set(spec) - set(VARIANT_KEYS))
    if bad:
        raise ConfigError(f"{key}.{bad[0]}", spec[bad[0]], "unknown variant key", list(VARIANT_KEYS))
    if not re.fullmatch(NAME, name):
        raise ConfigError(key, name, "variant names use letters, digits, '.', '_', '-'")
    if spec.get("config") is not None and not isinstance(spec["config"], str):
        raise ConfigError(f"{key}.config", spec["config"], "must be the path of a config file")
    config = resolve(spec.get("config") or default_config)
    if not config:
        raise ConfigError(f"{key}.config", None, "no config for this variant (set `config`)")
    if not os.path.exists(config):
        raise ConfigError(f"{key}.config", config, "config file does not exist")
    replace = {**replacement_map("replace", shared_replace),
               **replacement_map(f"{key}.replace", spec.get("replace"))}
    check_replacements(key, config, replace)
    return {"config": config, "overrides": override_list(f"{key}.overrides", spec.get("overrides")),
            "replace": replace}


def launch_command(value) -> List[str]:
    """``launch``: a list of arguments, or one command line split as a shell would."""
    launch = value or ["python", "launch.py"]
    if isinstance(launch, str):
        launch = shlex.split(launch)
    return string_list("launch", launch, 'e.g. ["python", "launch.py"]')


def replacement_map(key: str, value) -> Dict[str, object]:
    """``replace``: {dotted config key: the value that replaces it whole}."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and re.fullmatch(r"\w+(\.\w+)*", k) for k in value):
        raise ConfigError(key, value, "maps dotted config keys to the values that replace them whole, e.g. "
                          "{system.material: {n_output_dims: 4, color_activation: none}}")
    return dict(value)


def check_replacements(key: str, config: str, replace: Mapping[str, object]) -> None:
    """Each replaced key exists in the variant's config (a replacement of nothing is a typo)."""
    if not replace:
        return
    cfg = OmegaConf.load(config)
    missing = object()
    for name in replace:
        if OmegaConf.select(cfg, name, default=missing, throw_on_missing=False) is missing:
            parent = OmegaConf.select(cfg, name.rpartition(".")[0]) if "." in name else cfg
            siblings = parent if isinstance(parent, Mapping) else cfg  # the keys beside the missing one
            raise ConfigError(f"{key}.replace.{name}", replace[name],
                              f"replaces a key that {os.path.basename(config)} does not have",
                              sorted(str(k) for k in siblings.keys()))


def string_list(key: str, value, example: str) -> List[str]:
    """A list of strings (None: empty). A single string is an error, not a list of characters."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(key, value, f"must be a list, {example}")
    for item in value:
        if isinstance(item, (Mapping, list, tuple)) or item is None:
            raise ConfigError(key, value, f"must be a list of strings, {example}")
    return [str(item) for item in value]


def override_list(key: str, value) -> List[str]:
    """threestudio command-line overrides, each ``dotted.key=value``."""
    overrides = string_list(key, value, "e.g. [trainer.max_steps=10000, system.prompt_processor.use_perp_neg=false]")
    for override in overrides:
        if "=" not in override:
            raise ConfigError(key, override, "an override is `dotted.key=value`, e.g. trainer.max_steps=10000")
    return overrides


def integer_list(key: str, value) -> List[int]:
    """A list of integers (booleans are not integers here)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, value, "must be a list of integers, e.g. [0, 1, 2]")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(key, value, f"must be a list of integers, e.g. [0, 1, 2] ({item!r} is not one)")
    return [int(item) for item in value]
