"""One 3D run (train the volume with the variant's guidance, render and judge its test orbit)
and ``run_tasks``, which runs many of them (in ``janus_lab.worker_pool``). A VSD variant's run
trains as threestudio's prolificdreamer-system (``fast3d.train`` with its ``VSDSettings``), the
LoRA on the worker's prior UNet for the run only."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

from antijanus.backbones.lora import remove_lora
from antijanus.core.guidance import ScoreDistillationConfig, ScoreDistillationGuidance
from antijanus.core.guidance_config import VSDConfig
from antijanus.core.vsd_guidance import VSDGuidance
from antijanus.utils.cache import write_json
from antijanus.utils.naming import slug

from ..fast3d import make_scene, render_orbit, train
from ..janus import OUTCOMES
from ..judge import Judge
from ..orbits import orbit_azimuths
from ..volume_orbits import judge_run_orbit, save_orbit
from ..worker_pool import failure_message, outcomes
from .keys import judge_identity
from .lab_models import LabModels, load_backbone
from .settings import FastSettings, Representation, variant_vsd
from .variants import variant_by_name

RESULT = "result.json"


@dataclass(frozen=True)
class RunSpec:
    variant: str
    prompt: str
    seed: int

    @property
    def tag(self) -> str:
        return f"{self.variant}/{slug(self.prompt)}/s{self.seed}"


@dataclass
class RunTask:
    """Everything one run needs (picklable: runs go to worker processes)."""

    spec: RunSpec
    prompt_output: Any
    guidance: ScoreDistillationConfig
    representation: Representation
    settings: FastSettings
    models: LabModels
    run_dir: str
    key: str  # what the result depends on (a finished run with another key runs again)


_WORKER: Dict[str, Any] = {}  # this process's loaded models


def worker_models(models: LabModels, threads: int) -> Tuple[Any, Judge]:
    """The prior's backbone and the judge, loaded once per process (again when their folder changes)."""
    torch.set_num_threads(threads)
    if _WORKER.get("prior") != models.prior:
        _WORKER.update(prior=models.prior, backbone=load_backbone(models.prior))
    if _WORKER.get("judge_path") != models.judge:
        _WORKER.update(judge_path=models.judge, judge=Judge.load(models.judge))
    return _WORKER["backbone"], _WORKER["judge"]


def make_guidance(task: RunTask, backbone, messages: List[str]) -> ScoreDistillationGuidance:
    """The run's guidance, its log lines into ``messages``. VSD's LoRA and camera embedding start
    from the run's seed (the same initial weights for every VSD variant of a seed)."""
    if isinstance(task.guidance, VSDConfig):
        torch.manual_seed(task.spec.seed)
        return VSDGuidance(task.guidance, "cpu", backbone=backbone, info=messages.append, warn=messages.append)
    guidance = ScoreDistillationGuidance(task.guidance, "cpu", backbone=backbone)
    guidance.info = guidance.warn = messages.append
    return guidance


def run_one(task: RunTask) -> Dict[str, Any]:
    """Train one run, render and judge its orbit; writes orbit.png, orbit.pt and result.json."""
    backbone, judge = worker_models(task.models, task.settings.threads)
    s, rep = task.settings, task.representation
    messages: List[str] = []
    guidance = make_guidance(task, backbone, messages)
    vsd = variant_vsd(variant_by_name(task.spec.variant), s) if isinstance(task.guidance, VSDConfig) else None
    system = dataclasses.replace(rep.system, geometry_lr=s.lr)
    start = time.time()
    scene = make_scene(rep.volume, task.spec.seed)  # settings' volume with the config's density blob
    try:
        trained = train(guidance, task.prompt_output, scene, rep.cameras, system, rep.material, s.steps,
                        task.spec.seed, log_every=max(1, s.steps // 20), vsd=vsd)
    finally:
        if vsd is not None:  # the worker's prior is the base UNet again for its next run
            remove_lora(guidance.lora.lora)
    train_s = time.time() - start
    decode = backbone.decode_latents if s.volume.features == "latent" else None
    frames, opacity = render_orbit(scene, orbit_azimuths(s.orbit_views), s.orbit_elevation, rep.orbit_distance,
                                   rep.orbit_fovy, rep.material, s.steps, resolution=rep.cameras.height, decode=decode)
    metrics = judge_run_orbit(frames, judge, task.spec.prompt, s)
    metrics["coverage"] = float((opacity > 0.5).float().mean())
    os.makedirs(task.run_dir, exist_ok=True)
    save_orbit(task.run_dir, frames)
    result = {"variant": task.spec.variant, "prompt": task.spec.prompt, "seed": task.spec.seed, "key": task.key,
              "judge": judge_identity(task.models.judge),
              "metrics": metrics, "train_s": train_s, "total_s": time.time() - start,
              "final": {k: v[-1] for k, v in trained.history.items()}, "history": trained.history,
              "guidance_log": messages, "prompts": task.prompt_output.summary()}
    if vsd is not None:
        result["vsd"] = dataclasses.asdict(vsd)
    write_json(os.path.join(task.run_dir, RESULT), result)
    return result


def progress_line(result: Dict[str, Any], verdicts: bool) -> str:
    """A finished run's metrics in a progress line (``verdicts=False``: without the Janus verdict,
    the outcome and view accuracy, as the calibration shows them)."""
    m = result["metrics"]
    if verdicts:
        outcome = f" outcome {OUTCOMES[int(m['outcome'])]}" if "outcome" in m else ""
        return f"janus {m['janus']:.0f}{outcome} view accuracy {m['view_accuracy']:.2f}"
    return (f"kind accuracy {m.get('kind_accuracy', math.nan):.2f} "
            f"face in front {m.get('face_in_front', math.nan):.2f} coverage {m['coverage']:.3f}")


class RunsFailed(RuntimeError):
    """Runs failed (one line each: the run and its error); the others finished."""


def run_tasks(tasks: Sequence[RunTask], jobs: int = 1, log: Callable[[str], None] = print,
              verdicts: bool = True) -> List[Dict[str, Any]]:
    """Run the tasks, ``jobs`` at a time in worker processes (1: in this process). A failed run
    is reported and the others go on; the failures are raised at the end (``RunsFailed``), a
    worker's whatever it was (``worker_pool.outcomes``). ``verdicts=False``: the progress lines leave
    out the Janus verdict and view accuracy (the calibration)."""
    results: List[Dict[str, Any]] = []
    failures: List[str] = []
    if not tasks:  # nothing to do (every run finished before): no pool
        return results
    for task, outcome in outcomes(run_one, tasks, jobs):  # run_one sets each worker's torch threads
        try:
            result = outcome()
        except Exception as error:  # noqa: BLE001 - reported, the sweep goes on
            failures.append(f"{task.spec.tag}: {failure_message(error)}")
            log(f"error: {failures[-1]}")
            continue
        results.append(result)
        log(f"[{len(results) + len(failures)}/{len(tasks)}] {task.spec.tag}: {progress_line(result, verdicts)} "
            f"({result['train_s']:.0f} s)")
    if failures:
        raise RunsFailed(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))
    return results
