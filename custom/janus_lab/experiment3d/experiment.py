"""The 3D experiment: every variant on the same prompts and seeds; which runs are finished (by
their content key), the tasks still to run, the finished results judged by the judge in place,
and the report (tables and orbit grids)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from antijanus.utils.cache import read_json, write_json
from antijanus.utils.errors import ConfigError
from antijanus.utils.naming import slug

from ..janus import face_scrambled
from ..judge import Judge
from ..volume_orbits import judge_run_orbit, kind_of, load_orbit_frames
from .grids import orbit_grid
from .keys import experiment_key, judge_identity, run_key
from .lab_models import LabModels
from .prompts import PromptFactory, append_per_view_prompts
from .runs import RESULT, RunsFailed, RunSpec, RunTask, run_tasks
from .settings import FastSettings, Representation, variant_guidance
from .tables import write_tables
from .variants import REPRESENTATION_CONFIG, VARIANT_NAMES, lab_prompts, variant_by_name


def _check_unique(key: str, values: Sequence[Any]) -> None:
    """A value listed twice would count its runs twice."""
    seen = set()
    for value in values:
        if value in seen:
            raise ConfigError(key, value, "is listed twice (its runs would count twice)")
        seen.add(value)


def _check_own_folders(prompts: Sequence[str]) -> None:
    """Two prompts with one slug ("a bear", "A bear,") would share their runs' folders: one run
    counted for both."""
    first = {}
    for prompt in prompts:
        other = first.setdefault(slug(prompt), prompt)
        if other != prompt:
            raise ConfigError("prompts", prompt, f"shares its runs' folder ({slug(prompt)}) with {other!r}")


@dataclass
class Experiment:
    out: str
    variants: Sequence[str] = VARIANT_NAMES
    prompts: Sequence[str] = field(default_factory=lab_prompts)
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    settings: FastSettings = FastSettings()
    models: LabModels = field(default_factory=LabModels.default)
    _key: Optional[str] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("variants", "prompts", "seeds"):
            _check_unique(key, getattr(self, key))
        _check_own_folders(self.prompts)

    def specs(self) -> List[RunSpec]:
        """Seed-major order: every variant and prompt gets seed 0 before any gets seed 1."""
        return [RunSpec(v, p, s) for s in self.seeds for v in self.variants for p in self.prompts]

    def run_dir(self, spec: RunSpec) -> str:
        return os.path.join(self.out, "runs", spec.tag)

    def key(self) -> str:
        """The settings and the weights of the models that train (``keys.experiment_key``)."""
        if self._key is None:
            self._key = experiment_key(self.settings, self.models)
        return self._key

    def run_key(self, variant: str) -> str:
        """What a finished run of ``variant`` depends on (``keys.run_key``)."""
        return run_key(self.key(), variant_by_name(variant))

    def judge_identity(self) -> str:
        return judge_identity(self.models.judge)

    def finished(self, spec: RunSpec) -> Optional[Dict[str, Any]]:
        """The run's result when it finished at this key, else None."""
        result = read_json(os.path.join(self.run_dir(spec), RESULT))
        if result is None or (result.get("variant"), result.get("prompt"), result.get("seed")) != (
                spec.variant, spec.prompt, spec.seed) or result.get("key") != self.run_key(spec.variant):
            return None
        return result

    def done(self, spec: RunSpec) -> bool:
        return self.finished(spec) is not None

    def tasks(self, log=print) -> List[RunTask]:
        """The runs still to do, their prompt outputs prepared here (debiasing, DNP) once."""
        todo = [spec for spec in self.specs() if not self.done(spec)]
        if not todo:
            return []
        for name in self.variants:
            variant_by_name(name)
        for prompt in self.prompts:
            kind_of(prompt)
        # prompt caches (debiased prompts, DNP's n*) per experiment key: the processors key them on
        # the models' paths, the experiment key on their weights
        factory = PromptFactory(self.models, cache_dir=os.path.join(self.out, "cache", self.key()), log=log)
        representation = Representation.from_config(self.settings.volume, self.settings.steps,
                                                     preset=self.settings.cameras)
        guidances = {name: variant_guidance(variant_by_name(name), self.settings, self.models.prior)
                     for name in dict.fromkeys(spec.variant for spec in todo)}
        outputs = {}
        for spec in todo:
            if (spec.variant, spec.prompt) not in outputs:
                output = factory(variant_by_name(spec.variant), spec.prompt, self.settings.steps)
                outputs[(spec.variant, spec.prompt)] = output
                self.write_prompt_record(spec, output)
        return [RunTask(spec, outputs[(spec.variant, spec.prompt)], guidances[spec.variant], representation,
                        self.settings, self.models, self.run_dir(spec), self.run_key(spec.variant))
                for spec in todo]

    def write_prompt_record(self, spec: RunSpec, output) -> None:
        write_json(os.path.join(self.out, "prompts", f"{spec.variant}--{slug(spec.prompt)}.json"), output.summary())

    def write_record(self) -> None:
        """experiment.json: what this experiment runs."""
        os.makedirs(self.out, exist_ok=True)
        write_json(os.path.join(self.out, "experiment.json"), {
            "settings": self.settings.to_dict(), "models": dataclasses.asdict(self.models),
            "variants": [dataclasses.asdict(variant_by_name(v)) for v in self.variants],
            "prompts": list(self.prompts), "seeds": list(self.seeds),
            "representation_config": REPRESENTATION_CONFIG})

    def run(self, jobs: int = 1, log=print, verdicts: bool = True) -> Dict[str, str]:
        """Every run not done yet, then the report (``verdicts=False``: progress lines and grids
        without the judge's verdicts, and no tables: the calibration)."""
        self.write_record()
        tasks = self.tasks(log)
        log(f"{len(tasks)} run(s) to do, {len(self.specs()) - len(tasks)} done before ({jobs} at a time)")
        error = None
        try:
            run_tasks(tasks, jobs, log, verdicts=verdicts)
        except RunsFailed as failed:
            error = failed
        paths = self.report(tables=verdicts)
        if error is not None:
            raise error
        return paths

    def results(self) -> List[Dict[str, Any]]:
        """The finished runs, each with the metrics of the judge now in place (a run judged by
        other weights is judged again from its saved orbit, cached beside it per judge)."""
        found = [r for r in (self.finished(spec) for spec in self.specs()) if r is not None]
        self._judge_again(found)
        self._add_late_metrics(found)
        return found

    def _judge_again(self, results: List[Dict[str, Any]]) -> None:
        identity = self.judge_identity()
        judge = None
        for r in results:
            if r.get("judge") == identity:
                continue
            spec = RunSpec(r["variant"], r["prompt"], r["seed"])
            path = os.path.join(self.run_dir(spec), f"metrics-judge-{identity[:16]}.json")
            metrics = read_json(path)
            if metrics is None:
                judge = judge or Judge.load(self.models.judge)
                metrics = judge_run_orbit(load_orbit_frames(self.run_dir(spec)), judge, spec.prompt, self.settings)
                metrics["coverage"] = r["metrics"]["coverage"]  # the volume's, not the judge's
                write_json(path, metrics)
            r["metrics"] = metrics
            r["judge"] = identity

    def _add_late_metrics(self, results: List[Dict[str, Any]]) -> None:
        """Metrics added after a run finished (``face_scrambled``; the outcome, seventh entry)
        from its saved orbit; the metrics it already has are kept."""
        missing = [r for r in results if "face_scrambled" not in r["metrics"] or "outcome" not in r["metrics"]]
        if not missing:
            return
        judge = Judge.load(self.models.judge)
        for r in missing:
            spec = RunSpec(r["variant"], r["prompt"], r["seed"])
            frames = load_orbit_frames(self.run_dir(spec))
            if "face_scrambled" not in r["metrics"]:
                r["metrics"]["face_scrambled"] = face_scrambled(frames, judge)
            if "outcome" not in r["metrics"]:
                late = judge_run_orbit(frames, judge, spec.prompt, self.settings)
                r["metrics"].update({k: v for k, v in late.items() if k not in r["metrics"]})

    def report(self, tables: bool = True, out: Optional[str] = None) -> Dict[str, str]:
        """table.md / table.csv / table.json and one orbit grid per variant, from the finished
        runs, into ``out`` (default: the experiment's folder; ``tables=False``: the grids alone,
        without the judge's verdicts)."""
        out = out or self.out
        results = self.results()
        paths = write_tables(results, out, list(self.variants), list(self.prompts)) if tables else {}
        if tables:  # the per-view prompts each variant's processor produced, under the table (issue 30)
            append_per_view_prompts(paths["markdown"], os.path.join(self.out, "prompts"), self.variants, self.prompts)
        for variant in self.variants:
            grid = orbit_grid([r for r in results if r["variant"] == variant], out, variant,
                              lambda r: load_orbit_frames(self.run_dir(RunSpec(r["variant"], r["prompt"], r["seed"]))),
                              verdicts=tables)
            if grid:
                paths[f"grid_{variant}"] = grid
        return paths
