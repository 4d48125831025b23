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

Each run is `launch --config C --train name=<sweep> tag=<run folder> use_timestamp=false
exp_root_dir=... seed=S system.prompt_processor.prompt=P <overrides>`.

A run's identity is what determines its result: the variant, the exact prompt, the seed, the
sweep-wide and the variant's overrides (in order) and the SHA-256 of the contents of the config
file the run uses (its derived config with ``replace``). Its folder, ``<out>/<name>/runs/<name>/<tag>``,
is named ``<variant>--<prompt slug>--s<seed>--<hash>``: a readable part (cut to 60 UTF-8 bytes) and
10 hex digits of the SHA-256 of the identity, so that no two runs share a folder (prompts that
differ in case, punctuation or after the slug's cut included) and a file name never gets long. The
identity is written to ``<run>/identity.json`` before training; a run is done only when its folder
holds the done marker and that file matches. Editing an override, a prompt or a config's contents
therefore gives new runs (the old ones stay on disk, untouched, and are no longer reported).

``replace`` (sweep-wide or per variant) maps a config key to a value that replaces the key's whole
value, where a command-line override would merge into it (a material block of other keys, say).
A variant with replacements runs from its derived config, ``<out>/<name>/configs/<variant>.yaml``
(the variant's config with the blocks replaced, interpolations kept), written before the runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ...utils.cache import atomic_write, read_json
from ...utils.errors import ConfigError
from ...utils.naming import slug
from ..evaluate import MetricSettings

DONE_MARKER = ".antijanus-done"  # written into a run folder once its training finished
IDENTITY_FILE = "identity.json"  # a run's identity (run_identity), written into its folder before training
TAG_READABLE_BYTES = 60  # the readable part of a run folder's name (variant--prompt slug), in UTF-8 bytes
DIGEST_CHARS = 10  # hex digits of the identity's SHA-256 in a run folder's name
MAX_SEED = 2 ** 32 - 1  # Lightning's seed_everything replaces a seed outside [0, MAX_SEED] by a random one
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
    identity: str  # canonical JSON of run_identity: what determines the run's result

    def command(self, launch: Sequence[str], sweep_name: str, exp_root: str) -> List[str]:
        return list(launch) + [
            "--config", self.config, "--train", f"name={sweep_name}", f"tag={self.tag}",
            "use_timestamp=false", f"exp_root_dir={exp_root}", f"seed={self.seed}",
            f"system.prompt_processor.prompt={self.prompt}", *self.overrides,
        ]

    @property
    def identity_file(self) -> str:
        return os.path.join(self.run_dir, IDENTITY_FILE)

    def recorded_identity(self) -> Optional[Dict]:
        """The identity written into the run's folder (None: no file, or unreadable)."""
        return read_json(self.identity_file)

    @property
    def done(self) -> bool:
        """Trained (the done marker) with exactly this identity (``identity.json`` matches)."""
        return (os.path.exists(os.path.join(self.run_dir, DONE_MARKER))
                and self.recorded_identity() == json.loads(self.identity))


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
        return cls.from_dict(load_sweep_file(path), os.path.dirname(os.path.abspath(path)))

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
        prompts = prompt_list(data.get("prompts"))
        seeds = seed_list(data.get("seeds", [0]))
        variants = variant_map(data)
        launch = launch_command(data.get("launch"))
        config = data.get("config")
        if config is not None and not isinstance(config, str):
            raise ConfigError("config", config, "must be the path of a threestudio config file")

        def resolve(path):
            return path if path is None or os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))

        checked = {v: check_variant(v, spec, config, data.get("replace"), resolve) for v, spec in variants.items()}
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
        """Every (variant, prompt, seed) run, in a stable order, each with its identity and the
        folder named after it (``run_tag``)."""
        runs = []
        for variant, spec in self.variants.items():
            config = self.derived_config(variant) if spec.get("replace") else spec["config"]
            contents = self.config_contents(variant)
            for prompt in self.prompts:
                for seed in self.seeds:
                    identity = run_identity(variant, prompt, seed, contents, self.overrides, spec["overrides"])
                    tag = run_tag(variant, prompt, seed, identity)
                    runs.append(Run(variant, prompt, seed, config, tuple(self.overrides + spec["overrides"]), tag,
                                    os.path.join(self.exp_root, self.name, tag), canonical_json(identity)))
        return runs

    def config_contents(self, variant: str) -> bytes:
        """The contents of the config file the variant's runs read: its derived config's (as
        write_derived_configs writes it) when it has replacements, else its config file's."""
        spec = self.variants[variant]
        if spec.get("replace"):
            return derived_config_text(spec["config"], spec["replace"], self.name).encode("utf-8")
        try:
            with open(spec["config"], "rb") as f:
                return f.read()
        except OSError as error:
            raise ConfigError(f"variants.{variant}.config", spec["config"],
                              f"cannot be read ({error.strerror})") from None

    def derived_config(self, variant: str) -> str:
        """Where a variant with replacements gets its config (written by write_derived_configs)."""
        return os.path.join(self.out, self.name, "configs", f"{variant}.yaml")

    def write_derived_configs(self) -> List[str]:
        """Each variant with replacements: its config with those keys' values replaced whole
        (``derived_config_text``), written atomically where its runs read it."""
        written = []
        for variant, spec in self.variants.items():
            if not spec.get("replace"):
                continue
            path = self.derived_config(variant)
            text = derived_config_text(spec["config"], spec["replace"], self.name)
            atomic_write(path, lambda f: f.write(text))
            written.append(path)
        return written


def derived_config_text(config: str, replace: Mapping[str, object], sweep_name: str) -> str:
    """``config`` with the values of the keys of ``replace`` replaced whole (interpolations kept,
    comments dropped), as YAML with a header saying so (the config's file name, not its path: the
    text, part of the runs' identity, does not change when the sweep's folder moves)."""
    cfg = OmegaConf.load(config)
    for key, value in replace.items():
        OmegaConf.update(cfg, key, value, merge=False)
    text = f"# {os.path.basename(config)} with {', '.join(replace)} replaced (sweep {sweep_name})\n"
    return text + OmegaConf.to_yaml(cfg)


def run_identity(variant: str, prompt: str, seed: int, config_contents: bytes, overrides: Sequence[str],
                 variant_overrides: Sequence[str]) -> Dict[str, object]:
    """What determines a run's result (and names the row it is reported in): the variant, the
    exact prompt, the seed, the config file's contents (their SHA-256) and the overrides, in order."""
    return {"variant": variant, "prompt": prompt, "seed": seed,
            "config_sha256": hashlib.sha256(config_contents).hexdigest(),
            "overrides": list(overrides), "variant_overrides": list(variant_overrides)}


def canonical_json(data: Mapping) -> str:
    """One text per value: keys sorted, no spaces, non-ASCII characters kept."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def run_tag(variant: str, prompt: str, seed: int, identity: Mapping) -> str:
    """A run's folder name: ``<variant>--<prompt slug>`` cut to TAG_READABLE_BYTES UTF-8 bytes,
    ``--s<seed>``, then ``--`` and DIGEST_CHARS hex digits of the identity's SHA-256 (at most
    ~85 bytes, whatever the prompt)."""
    readable = f"{variant}--{slug(prompt)}".encode("utf-8")[:TAG_READABLE_BYTES].decode("utf-8", "ignore")
    digest = hashlib.sha256(canonical_json(identity).encode("utf-8")).hexdigest()[:DIGEST_CHARS]
    return f"{readable.rstrip('_-')}--s{seed}--{digest}"


def load_sweep_file(path: str) -> Mapping:
    """The sweep file's YAML (interpolations resolved); a missing file, a YAML syntax error (with
    its line) or an interpolation that cannot be resolved is a ConfigError naming the file."""
    if not os.path.isfile(path):
        raise ConfigError("sweep", path, "no such sweep file")
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.YAMLError as error:
        raise ConfigError("sweep", path, f"not valid YAML: {yaml_error_line(error)}") from None
    except OmegaConfBaseException as error:
        problem = " ".join(str(error).split())
        raise ConfigError("sweep", path, f"an interpolation cannot be resolved: {problem}") from None


def yaml_error_line(error: "yaml.YAMLError") -> str:
    """A YAML error in one line: ``line L, column C: <problem> (<context> from line L0)``."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context:
        text += f" ({context}" + (f" from line {context_mark.line + 1})" if context_mark is not None else ")")
    return text


def prompt_list(value) -> List[str]:
    """``prompts``: at least one, none empty (or only spaces), none given twice."""
    prompts = string_list("prompts", value, 'e.g. ["a DSLR photo of a corgi"]')
    if not prompts:
        raise ConfigError("prompts", prompts, "needs at least one non-empty prompt")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ConfigError("prompts", prompts, f"prompt {i + 1} is empty")
        if prompt in prompts[:i]:
            raise ConfigError("prompts", prompts, f"{prompt!r} is given twice (its runs would be counted twice)")
    return prompts


def seed_list(value) -> List[int]:
    """``seeds``: at least one, each one threestudio seeds with as given (Lightning replaces a
    seed outside [0, 2**32 - 1] by a random one), none given twice."""
    seeds = integer_list("seeds", value)
    if not seeds:
        raise ConfigError("seeds", seeds, "needs at least one seed")
    for i, seed in enumerate(seeds):
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError("seeds", seeds, f"{seed} is not a seed in [0, {MAX_SEED}] (Lightning would replace "
                              "it by a random one)")
        if seed in seeds[:i]:
            raise ConfigError("seeds", seeds, f"{seed} is given twice (its runs would be counted twice)")
    return seeds


def variant_map(data: Mapping) -> Dict[str, object]:
    """``variants`` by name: left out, one variant named 'default'; given, a non-empty mapping
    whose names stay distinct as strings (1 and '1' are one name)."""
    if "variants" not in data:
        return {"default": {}}
    variants = data["variants"]
    if isinstance(variants, (Mapping, list, tuple, type(None))) and not variants:
        raise ConfigError("variants", variants, "needs at least one variant, e.g. {perp-neg: {}} (leave the key "
                          "out for one variant named 'default' with the sweep's config)")
    if not isinstance(variants, Mapping):
        raise ConfigError("variants", variants, "maps variant names to {config, overrides}, e.g. "
                          "{baseline: {overrides: [system.prompt_processor.use_perp_neg=false]}, perp-neg: {}}")
    names = [str(name) for name in variants]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError("variants", list(variants), f"{twice[0]!r} names two variants")
    return {str(name): spec for name, spec in variants.items()}


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
