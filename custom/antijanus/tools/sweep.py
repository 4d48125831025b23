"""Ablation sweeps: config overrides x prompts x seeds as threestudio runs, then one table.

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
use_timestamp=false exp_root_dir=... seed=S system.prompt_processor.prompt=P <overrides>`; a run
that finished (it wrote ``.antijanus-done``) is skipped when the sweep is run again. With a
``metrics`` block, each run then renders its test orbit from its checkpoint in the same slot
(GPU / SLURM task) with threestudio's ``launch.py --test`` (a run whose orbit is missing is
rendered again, not retrained). ``collect`` computes the metrics of every rendered run that has
none yet (LPIPS and CLIP loaded once), then reads every finished run's last logged training
metrics (threestudio's CSV logs) and its ``metrics.json``, and writes one CSV (every column) plus
a Markdown table of mean +- std over seeds per variant and prompt and one figure of bar charts,
both of the view-consistency metrics and the training losses that differ between runs. A failed
run does not stop the others; each failure is reported with the log that says why.

``replace`` (sweep-wide or per variant) maps a config key to a value that replaces the key's whole
value, where a command-line override would merge into it (a material block of other keys, say).
A variant with replacements runs from its derived config, ``<out>/<name>/configs/<variant>.yaml``
(the variant's config with the blocks replaced, interpolations kept), written before the runs.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import re
import shlex
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from ..utils.cache import atomic_write, cache_key, read_json
from ..utils.errors import ConfigError
from .evaluate import (
    MetricModels, MetricSettings, evaluate_folder, newest_test_folder, orbit_folder, render_orbit, write_results,
)
from ..utils.progress import progress_bar

DONE_MARKER = ".antijanus-done"
# The view-consistency metrics lead the table and the figure (always, when computed); then the
# training measurements (losses, gradient norm, Perp-Neg projections, D-SDS clipped fraction)
# that differ between runs. Settings and bookkeeping logged as metrics (learning rates, lambdas,
# min/max step, the clip threshold, UNet rows, the applied negative weights, n_views) and
# constants stay in results.csv only.
EVALUATION_KEYS = ("a_lpips", "clip_r_precision", "clip_front_in_region", "clip_side_in_region",
                   "clip_back_in_region")
MEASURED_DIAGNOSTICS = ("grad_norm", "perp_neg/mean_abs_proj", "dsds/clipped_fraction")


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
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        base = os.path.dirname(os.path.abspath(path))
        return cls.from_dict(data, base)

    @classmethod
    def from_dict(cls, data: Mapping, base_dir: str = ".") -> "Sweep":
        if not isinstance(data, Mapping):
            raise ConfigError("sweep", data, "a sweep file is a mapping of keys (name, config, variants, ...)")
        known = {"name", "config", "launch", "out", "overrides", "variants", "prompts", "seeds", "metrics", "replace"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]], "unknown sweep key", sorted(known))
        name = str(data.get("name") or "")
        if not re.fullmatch(r"[\w.-]+", name):
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
        launch = data.get("launch") or ["python", "launch.py"]
        if isinstance(launch, str):
            launch = shlex.split(launch)  # one command line, split as a shell would
        launch = string_list("launch", launch, 'e.g. ["python", "launch.py"]')
        config = data.get("config")
        if config is not None and not isinstance(config, str):
            raise ConfigError("config", config, "must be the path of a threestudio config file")

        def resolve(path):
            return path if path is None or os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))

        checked = {}
        for vname, spec in variants.items():
            if spec is not None and not isinstance(spec, Mapping):
                raise ConfigError(f"variants.{vname}", spec, "a variant is a mapping with `config` and/or "
                                  "`overrides`, e.g. {overrides: [system.prompt_processor.use_perp_neg=false]}")
            spec = dict(spec or {})
            bad = sorted(set(spec) - {"config", "overrides", "replace"})
            if bad:
                raise ConfigError(f"variants.{vname}.{bad[0]}", spec[bad[0]], "unknown variant key",
                                  ["config", "overrides", "replace"])
            if not re.fullmatch(r"[\w.-]+", str(vname)):
                raise ConfigError(f"variants.{vname}", vname, "variant names use letters, digits, '.', '_', '-'")
            if spec.get("config") is not None and not isinstance(spec["config"], str):
                raise ConfigError(f"variants.{vname}.config", spec["config"], "must be the path of a config file")
            vconfig = resolve(spec.get("config") or config)
            if not vconfig:
                raise ConfigError(f"variants.{vname}.config", None, "no config for this variant (set `config`)")
            if not os.path.exists(vconfig):
                raise ConfigError(f"variants.{vname}.config", vconfig, "config file does not exist")
            replace = {**replacement_map("replace", data.get("replace")),
                       **replacement_map(f"variants.{vname}.replace", spec.get("replace"))}
            check_replacements(f"variants.{vname}", vconfig, replace)
            checked[str(vname)] = {"config": vconfig, "overrides": override_list(
                f"variants.{vname}.overrides", spec.get("overrides")), "replace": replace}
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
                    tag = f"{variant}--{slug(prompt)}--s{seed}"
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
        from omegaconf import OmegaConf

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
    from omegaconf import OmegaConf

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
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, value, "must be a list of integers, e.g. [0, 1, 2]")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(key, value, f"must be a list of integers, e.g. [0, 1, 2] ({item!r} is not one)")
    return [int(item) for item in value]


def parse_slurm_parameters(items: Sequence[str]) -> Dict[str, object]:
    """``KEY=VALUE`` strings (the ``--slurm`` arguments) as submitit parameters; integer values
    become ints."""
    params: Dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("slurm", item, "expects KEY=VALUE, e.g. slurm_partition=gpu timeout_min=600")
        params[key.strip()] = int(value) if re.fullmatch(r"-?\d+", value) else value
    return params


def slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^\w]+", "_", text.strip().lower()).strip("_")[:limit]


def orbit_missing(sweep: Sweep, run: Run) -> bool:
    """The sweep's metrics render an orbit from the checkpoint and this run has none (complete,
    of its current checkpoint)."""
    m = sweep.metrics
    return bool(m and m.render and orbit_folder(run.run_dir, m.n_views, m.elevation_deg) is None)


def needs_work(sweep: Sweep, run: Run) -> bool:
    """Not trained yet, or trained but its test orbit for the metrics is not rendered."""
    return not run.done or orbit_missing(sweep, run)


class StepFailed(RuntimeError):
    """A run's training or orbit render failed; ``log`` is the file that says why."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}, see {log}")
        self.log = log


@dataclass(frozen=True)
class RunFailure:
    run: Run
    message: str  # names the log to read

    def line(self) -> str:
        return f"error: {self.run.tag}: {self.message}"


class SweepFailed(RuntimeError):
    """Some runs failed (the others finished and can be collected)."""

    def __init__(self, failures: Sequence[RunFailure], launched: Sequence[Run]) -> None:
        self.failures = sorted(failures, key=lambda f: f.run.tag)
        self.launched = list(launched)
        super().__init__(f"{len(self.failures)} run(s) failed:\n" + "\n".join(f.line() for f in self.failures))


def training_log(run: Run) -> str:
    return os.path.join(run.run_dir, "sweep.log")


def execute_run(sweep: Sweep, run: Run, cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> None:
    """Train the run (unless it finished before), then render its test orbit from the checkpoint
    when the sweep has a metrics block. Raises RuntimeError (naming the log) when a step fails."""
    os.makedirs(run.run_dir, exist_ok=True)
    if not run.done:
        with open(training_log(run), "w") as log:
            code = subprocess.run(run.command(sweep.launch, sweep.name, sweep.exp_root), cwd=cwd,
                                  env=None if env is None else dict(env), stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise StepFailed(f"training failed (exit {code})", training_log(run))
        with open(os.path.join(run.run_dir, DONE_MARKER), "w") as f:
            f.write("ok\n")
    if orbit_missing(sweep, run):
        m = sweep.metrics
        render_orbit(run.run_dir, sweep.launch, m.n_views, m.elevation_deg, cwd=cwd, env=env)


def _failure(run: Run, error: BaseException) -> RunFailure:
    """The error as one line that names a log (the training log when the error names none)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, StepFailed) and " see " not in message:
        message += f" (training log: {training_log(run)})"
    return RunFailure(run, message)


def run_sweep(sweep: Sweep, gpus: Optional[Sequence[str]] = None, dry_run: bool = False,
              cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None, progress: bool = True) -> List[Run]:
    """Launch the runs that are not done: one after the other, or one at a time on each local
    GPU (``gpus=["0", "1"]``) in parallel. Returns the runs launched (or that would be). A failed
    run does not stop the others; at the end ``SweepFailed`` lists every failure with its log."""
    sweep.write_derived_configs()
    todo = [run for run in sweep.runs() if needs_work(sweep, run)]
    if dry_run:
        return todo
    slots = list(gpus) if gpus else [None]
    free = list(slots)
    lock = threading.Lock()

    def work(run: Run) -> None:
        with lock:
            slot = free.pop()
        try:
            run_env = dict(os.environ if env is None else env)
            if slot is not None:
                run_env["CUDA_VISIBLE_DEVICES"] = slot
            execute_run(sweep, run, cwd=cwd, env=run_env)
        finally:
            with lock:
                free.append(slot)

    bar = progress_bar(len(todo), f"sweep {sweep.name}", "run", progress)
    failures = []
    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = {pool.submit(work, run): run for run in todo}
        for future in as_completed(futures):
            if future.exception() is not None:
                failures.append(_failure(futures[future], future.exception()))
            bar.update(1)
    bar.close()
    if failures:
        raise SweepFailed(failures, todo)
    return todo


def dry_run_command(sweep: Sweep, run: Run) -> str:
    """The run's command as one shell-quoted line (copy-paste safe: prompts have spaces)."""
    return shlex.join(run.command(sweep.launch, sweep.name, sweep.exp_root))


def submit_slurm(sweep: Sweep, slurm: Mapping, cwd: Optional[str] = None, cluster: Optional[str] = None):
    """The runs that are not done as one job array through submitit (training and, with a
    metrics block, the orbit render in each task). ``slurm`` holds submitit's AutoExecutor
    parameters: generic ones (``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``)
    and SLURM ones with their prefix (``slurm_partition``, ``slurm_array_parallelism``).
    ``cluster`` is passed to AutoExecutor (None: SLURM when available; "local" runs the array as
    local processes, "debug" in this process)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("slurm", dict(slurm), "needs the `submitit` package (pip install submitit)") from None
    sweep.write_derived_configs()
    todo = [run for run in sweep.runs() if needs_work(sweep, run)]
    executor = submitit.AutoExecutor(folder=os.path.join(sweep.out, sweep.name, "slurm"), cluster=cluster)
    try:
        executor.update_parameters(name=f"antijanus-{sweep.name}", **dict(slurm))
    except (NameError, TypeError, ValueError) as error:  # submitit names unknown parameters in a NameError
        raise ConfigError("slurm", dict(slurm), f"not accepted by submitit: {error}") from None
    if not todo:
        return []
    return executor.map_array(execute_run, [sweep] * len(todo), todo, [cwd] * len(todo))


def evaluate_runs(sweep: Sweep, progress: bool = True, models: Optional[MetricModels] = None) -> List[str]:
    """Compute the metrics of every finished run that has none for the sweep's current metric
    settings (recomputed when the settings change, or the given models' ``identity``). Returns
    the run tags evaluated. ``models``: already loaded models (e.g. with another view
    classifier); default: the settings' ones."""
    settings = sweep.metrics
    if settings is None:
        return []
    identity = getattr(models, "identity", None)
    key = cache_key(**settings.to_dict(), **({"models": identity} if identity else {}))
    todo = []
    for run in sweep.runs():
        if not run.done:
            continue
        existing = read_json(os.path.join(run.run_dir, "metrics.json")) or {}
        if existing.get("metric_settings") == key:
            continue
        if settings.render:
            folder = orbit_folder(run.run_dir, settings.n_views, settings.elevation_deg)
        else:
            folder = _newest_test_folder_or_none(run.run_dir)
        if folder is not None:
            todo.append((run, folder))
    if not todo:
        return []
    models = models or MetricModels(settings)
    bar = progress_bar(len(todo), f"metrics {sweep.name}", "run", progress)
    for run, folder in todo:
        metrics, rows = evaluate_folder(folder, settings.prompt or run.prompt, settings, models)
        write_results(run.run_dir, {**metrics, "metric_settings": key}, rows, settings, models.views.name)
        bar.update(1)
    bar.close()
    return [run.tag for run, _ in todo]


def _newest_test_folder_or_none(run_dir: str) -> Optional[str]:
    try:
        return newest_test_folder(run_dir)
    except ConfigError:
        return None


def last_metrics(run_dir: str) -> Dict[str, float]:
    """The last logged value of every numeric metric of a threestudio run (CSV logs), plus the
    entries of ``metrics.json`` in the run folder."""
    values: Dict[str, float] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "csv_logs", "version_*", "metrics.csv"))):
        with open(path) as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key in ("step", "epoch") or value in ("", None):
                        continue
                    try:
                        values[key] = float(value)
                    except ValueError:
                        pass
    extra = read_json(os.path.join(run_dir, "metrics.json")) or {}
    values.update({k: float(v) for k, v in extra.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return values


def is_measurement(key: str) -> bool:
    """A training-log column that measures the run (a loss or a diagnostic), not a setting
    logged as a metric (learning rate, lambda, min/max step, clip threshold, UNet rows)."""
    name = key[len("train/"):] if key.startswith("train/") else key
    return name.split("/")[-1].startswith("loss") or name in MEASURED_DIAGNOSTICS


def varies(rows: Sequence[Mapping], key: str) -> bool:
    """The column's values differ between the runs that logged it (a run without training logs,
    e.g. one whose logs were deleted, is not a difference). With fewer than two values there is
    nothing to compare and the column is kept."""
    values = [row[key] for row in rows if row.get(key) is not None]
    if len(values) < 2:
        return True
    return max(values) - min(values) > 1e-9 * max(1.0, max(abs(v) for v in values))


def summary_keys(rows: Sequence[Mapping]) -> List[str]:
    """The columns of the table and the figure: the view-consistency metrics (also another view
    classifier's ``<name>_<view>_in_region``), then the training measurements that differ between
    runs (in name order)."""
    found = {k for row in rows for k in row} - {"variant", "prompt", "seed"}
    views = sorted(k for k in found - set(EVALUATION_KEYS) if k.endswith("_in_region"))
    measured = sorted(k for k in found - set(EVALUATION_KEYS) - set(views) if is_measurement(k) and varies(rows, k))
    return [k for k in EVALUATION_KEYS if k in found] + views + measured


def collect(sweep: Sweep, metrics: Optional[Iterable[str]] = None, progress: bool = True,
            models: Optional[MetricModels] = None) -> Dict[str, str]:
    """Evaluate the runs that need it (``evaluate_runs``, with ``models`` when given: another
    view classifier, extra metrics), then write <out>/<name>/results.csv (one row per finished
    run, every logged column), results.md (mean +- std over seeds per variant and prompt of
    ``metrics``, default ``summary_keys``) and results.png (one panel per column). Returns the
    paths."""
    evaluate_runs(sweep, progress, models)
    rows = []
    for run in sweep.runs():
        if not run.done:
            continue
        rows.append({"variant": run.variant, "prompt": run.prompt, "seed": run.seed, **last_metrics(run.run_dir)})
    found = {k for row in rows for k in row} - {"variant", "prompt", "seed"}
    all_keys = [k for k in EVALUATION_KEYS if k in found] + sorted(found - set(EVALUATION_KEYS))
    keys = summary_keys(rows) if metrics is None else [k for k in metrics if k in found]
    folder = os.path.join(sweep.out, sweep.name)
    os.makedirs(folder, exist_ok=True)
    csv_path, md_path = os.path.join(folder, "results.csv"), os.path.join(folder, "results.md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["variant", "prompt", "seed"] + all_keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| variant | prompt | runs | " + " | ".join(keys) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    groups: Dict[tuple, List[Dict]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["prompt"]), []).append(row)
    for (variant, prompt), group in groups.items():
        cells = []
        for key in keys:
            vals = [r[key] for r in group if key in r]
            cells.append(_mean_std(vals))
        lines.append(f"| {variant} | {prompt} | {len(group)} | " + " | ".join(cells) + " |")
    plot = plot_metrics(groups, keys, os.path.join(folder, "results.png"))
    plots = [plot] if plot else []
    left_out = sorted(set(all_keys) - set(keys))
    with open(md_path, "w") as f:
        f.write(f"# {sweep.name}\n\n" + "\n".join(lines) + "\n")
        if left_out:
            f.write(f"\nIn results.csv only (settings and bookkeeping logged as metrics, or the same in every "
                    f"run): {', '.join(left_out)}\n")
        for path in plots:
            f.write(f"\n![{os.path.basename(path)}]({os.path.basename(path)})\n")
    return {"csv": csv_path, "markdown": md_path, "runs": str(len(rows)), "plots": plots}


def plot_metrics(groups: Mapping[tuple, List[Dict]], keys: Sequence[str], path: str) -> Optional[str]:
    """One figure, one bar-chart panel per column (mean over seeds, std as error bars; variants
    grouped by prompt); None when matplotlib is not installed or there is nothing to plot."""
    if not keys or not groups:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    variants = list(dict.fromkeys(v for v, _ in groups))
    prompts = list(dict.fromkeys(p for _, p in groups))
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    panel_width = max(3.5, 0.9 * len(prompts) * len(variants))
    fig, axes = plt.subplots(rows, columns, figsize=(panel_width * columns, 2.8 * rows), squeeze=False)
    width = 0.8 / max(1, len(variants))
    for ax, key in zip(axes.flat, keys):
        for i, variant in enumerate(variants):
            means, stds = [], []
            for prompt in prompts:
                vals = [r[key] for r in groups.get((variant, prompt), []) if key in r]
                mean = sum(vals) / len(vals) if vals else float("nan")
                means.append(mean)
                stds.append(math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0)
            ax.bar([j + i * width for j in range(len(prompts))], means, width, yerr=stds, label=variant)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(prompts))])
        ax.set_xticklabels([p[:30] for p in prompts], fontsize=7)
        ax.set_title(key, fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_std(values: List[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4g} ± {std:.2g}"
