"""The lab's 3D experiment (issue 15, item 3): every method on the same prompts and seeds, each
run's test orbit judged for the Janus problem.

Each *variant* is a shipped config plus the overrides that select a method, the same in both
paths: the fast path here (``lab.fast3d``: a voxel volume trained in plain PyTorch with the real
guidance) and the launcher path (``custom/janus_lab/configs/janus-3d-sweep.yaml``: threestudio's own
``launch.py`` through the CPU mode, ``custom/janus_lab/scripts/lab_sweep.py``). From a variant's config the fast
path takes what this plugin provides and the user configures, unchanged: the ``system.guidance``
block (every key; ``clip_end_step: ${trainer.max_steps}`` resolves to the fast path's run
length) and the ``system.prompt_processor`` block (type and keys, see ``lab.prompt_output``),
with the lab's models put in (prior, masked LM, captioner). Everything else (cameras, losses,
optimiser, material, the blob) comes from one NeRF config, REPRESENTATION_CONFIG, for every
variant, so that variants differ only by their method.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from antijanus.core.guidance import DSDSConfig, ScoreDistillationConfig, ScoreDistillationGuidance
from antijanus.utils.errors import ConfigError
from .fast3d import (LAB_LATENT_RESOLUTION, LAB_RESOLUTION, CameraSettings, Material, SystemSettings,
                     VolumeSettings, make_scene, render_orbit, train)
from antijanus.utils.naming import slug

from .locations import plugin_config_dir
from .orbits import orbit_azimuths
from .model_files import model_path
from .world import KINDS

RESULT = "result.json"

CONFIG_DIR = plugin_config_dir()  # the plugin's shipped configs, which the variants run
REPRESENTATION_CONFIG = "perp-neg-nerf-sd.yaml"  # cameras, losses, optimiser, material, blob

GUIDANCE_CONFIGS = {"perp-neg-sds-guidance": ScoreDistillationConfig, "dsds-guidance": DSDSConfig}


@dataclass(frozen=True)
class Variant:
    name: str
    config: str  # file name in configs/
    overrides: Tuple[str, ...]  # threestudio command-line overrides that select the method
    description: str


# The methods, each a shipped config with its own settings (guidance scale, step range, clip
# schedule over the run's own steps, front range, view phrases, ...). "baseline" and "sjc" are
# the plain view-dependent versions of their paths (threestudio's stock view prompts).
VARIANTS: Tuple[Variant, ...] = (
    Variant("baseline", "perp-neg-nerf-sd.yaml",
            ("system.prompt_processor.use_perp_neg=false",),
            "SDS with view-dependent prompts (threestudio's stock processor)"),
    Variant("perp-neg", "perp-neg-nerf-sd.yaml", (), "Perp-Neg SDS"),
    Variant("dsds-clip", "dsds-nerf-sd.yaml", (), "D-SDS score clipping 2 -> 8"),
    Variant("dsds-full", "dsds-full-nerf-sd.yaml", (),
            "D-SDS score clipping + prompt debiasing (lab masked LM; front +-22.5, 'top view')"),
    Variant("perp-neg-dsds", "perp-neg-dsds-nerf-sd.yaml", (), "Perp-Neg + D-SDS score clipping"),
    Variant("sjc", "dsds-sjc-sd.yaml",
            ("system.guidance.score_clipping=false", "system.prompt_processor.use_prompt_debiasing=false",
             "system.prompt_processor.front_threshold=45.0",
             "system.prompt_processor.view_phrases.overhead=overhead view"),
            "SJC's score with view-dependent prompts (threestudio's view phrases and ranges), on the fast "
            "path's shared volume (the launcher path runs SJC's own latent volume)"),
    Variant("sjc-dsds", "dsds-sjc-sd.yaml", (),
            "SJC + D-SDS: clipping of SJC's score + prompt debiasing (the D-SDS paper's setting), on the "
            "fast path's shared volume"),
    Variant("dnp", "dnp-nerf-sd.yaml", (), "DNP in the paper's form, CFG(p, n*), n* from the lab captioner"),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)
# descriptions as they were when a run's key still covered them (Experiment._legacy_run_key)
_LEGACY_DESCRIPTIONS = {
    "sjc": "SJC's score with view-dependent prompts (threestudio's view phrases and ranges), on the fast "
           "path's shared RGB volume (the launcher path runs SJC's own latent volume)",
    "sjc-dsds": "SJC + D-SDS: clipping of SJC's score + prompt debiasing (the D-SDS paper's setting), on the "
                "fast path's shared RGB volume",
}


def lab_prompts(kinds: Sequence[str] = KINDS) -> List[str]:
    """Each kind with and without the front-only attribute: "a bear", "a smiling bear", ..."""
    return [p for kind in kinds for p in (f"a {kind}", f"a smiling {kind}")]


def variant_by_name(name: str) -> Variant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    raise ConfigError("variants", name, "unknown variant", list(VARIANT_NAMES))


def load_config(config: str, overrides: Sequence[str] = (), max_steps: Optional[int] = None):
    """A config with command-line style overrides (``trainer.max_steps`` set first, so that
    ``${trainer.max_steps}`` resolves to the run's own length)."""
    from omegaconf import OmegaConf

    path = config if os.path.isabs(config) else os.path.join(CONFIG_DIR, config)
    cfg = OmegaConf.load(path)
    if max_steps is not None:
        cfg.merge_with_dotlist([f"trainer.max_steps={int(max_steps)}"])
    if overrides:
        cfg.merge_with_dotlist(list(overrides))
    return cfg


def block(cfg, key: str) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, key)
    return {} if node is None else OmegaConf.to_container(node, resolve=True)


def guidance_config(cfg, prior: str) -> ScoreDistillationConfig:
    """The variant's guidance block as our guidance's config, on the lab prior (fp32 weights, as
    the CPU mode sets them)."""
    kind = cfg.system.guidance_type
    if kind not in GUIDANCE_CONFIGS:
        raise ConfigError("system.guidance_type", kind, "has no lab equivalent", sorted(GUIDANCE_CONFIGS))
    values = block(cfg, "system.guidance")
    known = {f.name for f in dataclasses.fields(GUIDANCE_CONFIGS[kind])}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"system.guidance.{unknown[0]}", values[unknown[0]], "unknown guidance key")
    values.update(pretrained_model_name_or_path=prior, half_precision_weights=False)
    return GUIDANCE_CONFIGS[kind](**values)


@dataclass(frozen=True)
class FastSettings:
    """The fast path's run settings. The representation, ``steps`` and ``lr`` were chosen once from
    the baseline alone by the calibration's pre-written rule (README), before any method was
    compared, and are the same for every variant."""

    steps: int = 600  # the calibration (README): the one eligible setting of the 40 tried
    lr: float = 0.1  # the volume's Adam learning rate (the background keeps the config's 0.001)
    # threestudio's Latent-NeRF at the prior's latent size: score distillation of pixels through
    # the lab VAE drew colour speckle and no face (README, the 2D diagnostic)
    volume: VolumeSettings = VolumeSettings(resolution=24, features="latent")
    # the guidance scale of every variant alike (None: each config's own, SD's recipe 100); a
    # property of the lab prior, chosen by the calibration from the baseline alone
    guidance_scale: Optional[float] = None
    # the training and test cameras: "configs" (threestudio's, from the representation config) or
    # "prior" (the framing of the prior's world photos, ``prior_framed``; pre-registration 2)
    cameras: str = "configs"
    orbit_views: int = 36  # azimuths 0, 10, ..., 350
    orbit_elevation: float = 15.0  # threestudio's eval_elevation_deg default (the NeRF configs keep it)
    threads: int = 1  # torch threads per run (runs go in parallel with --jobs)

    def __post_init__(self) -> None:
        if self.guidance_scale is not None and not (isinstance(self.guidance_scale, (int, float))
                                                    and math.isfinite(self.guidance_scale) and self.guidance_scale > 0):
            raise ConfigError("guidance_scale", self.guidance_scale, "a finite scale > 0, or None for each config's own")
        if self.cameras not in CAMERA_PRESETS:
            raise ConfigError("cameras", self.cameras, "the 3D runs' cameras", list(CAMERA_PRESETS))

    def to_dict(self) -> Dict[str, Any]:
        """The settings (the experiment key): fields added later appear only when set away from
        their default, so that runs finished before they existed keep their key."""
        values = dataclasses.asdict(self)
        for name, default in _LATER_FIELDS.items():
            if values[name] == default:
                del values[name]
        return values


CAMERA_PRESETS = ("configs", "prior")
_LATER_FIELDS = {"cameras": "configs"}


def prior_camera_overrides() -> List[str]:
    """``prior_framed`` as threestudio ``data`` overrides (the launcher path's ``--cameras prior``)."""
    framed = prior_framed(CameraSettings())
    return [f"data.camera_distance_range=[{framed.camera_distance_range[0]:g},{framed.camera_distance_range[1]:g}]",
            f"data.fovy_range=[{framed.fovy_range[0]:g},{framed.fovy_range[1]:g}]",
            "data.camera_perturb=0.0", "data.center_perturb=0.0", "data.up_perturb=0.0",
            f"data.eval_camera_distance={framed.eval_camera_distance:g}",
            f"data.eval_fovy_deg={framed.eval_fovy_deg:g}"]


def prior_framed(cameras: CameraSettings) -> CameraSettings:
    """The cameras framed as the prior's world photographs its creatures (``WorldBias``' distance
    and fovy ranges, looking at the centre: no camera, centre or up perturbation), the test orbit
    at the middle of those ranges; elevation, azimuth, light and size kept. threestudio's configs
    do the same for their priors (zero123.yaml: its distance and fovy; gradio/sjc.yaml,
    prolificdreamer-*.yaml: perturbations off)."""
    from .data import WorldBias

    bias = WorldBias()
    return dataclasses.replace(
        cameras, camera_distance_range=tuple(bias.distance_range), fovy_range=tuple(bias.fovy_range),
        camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0,
        eval_camera_distance=round(sum(bias.distance_range) / 2.0, 6), eval_fovy_deg=round(sum(bias.fovy_range) / 2.0, 6))


@dataclass
class Representation:
    """What every variant shares, from REPRESENTATION_CONFIG."""

    cameras: CameraSettings
    system: SystemSettings
    material: Material
    volume: VolumeSettings
    orbit_distance: float
    orbit_fovy: float

    @classmethod
    def from_config(cls, volume: VolumeSettings, max_steps: int, config: str = REPRESENTATION_CONFIG,
                    preset: str = "configs") -> "Representation":
        cfg = load_config(config, max_steps=max_steps)
        geometry = block(cfg, "system.geometry")
        if geometry.get("density_bias") != "blob_magic3d":
            raise ConfigError("system.geometry.density_bias", geometry.get("density_bias"),
                              "the fast path's volume has threestudio's blob_magic3d bias", ["blob_magic3d"])
        volume = dataclasses.replace(volume, density_blob_scale=float(geometry.get("density_blob_scale", 10.0)),
                                     density_blob_std=float(geometry.get("density_blob_std", 0.5)))
        # a latent volume renders at the prior's latent size (threestudio's Latent-NeRF renders 64x64 for SD)
        cameras = CameraSettings.from_data_block(
            block(cfg, "data"), LAB_LATENT_RESOLUTION if volume.features == "latent" else LAB_RESOLUTION)
        if preset not in CAMERA_PRESETS:
            raise ConfigError("cameras", preset, "the 3D runs' cameras", list(CAMERA_PRESETS))
        if preset == "prior":
            cameras = prior_framed(cameras)
        return cls(cameras=cameras, system=SystemSettings.from_blocks(block(cfg, "system.loss"),
                                                                      block(cfg, "system.optimizer")),
                   material=Material.from_block(block(cfg, "system.material")), volume=volume,
                   orbit_distance=cameras.eval_camera_distance, orbit_fovy=cameras.eval_fovy_deg)


def kind_of(prompt: str) -> str:
    words = [w for w in prompt.replace(",", " ").split() if w in KINDS]
    if len(words) != 1:
        raise ConfigError("prompts", prompt, f"a lab prompt names one of the kinds {list(KINDS)}")
    return words[0]


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LabModels:
    """The lab's model folders (default: the committed ones): prior, masked LM, judge, and the DNP
    captioner (the lab's judge-based captioner plugin folder, ``lab.captioner``)."""

    prior: str
    mlm: str
    judge: str
    captioner: str

    @classmethod
    def default(cls) -> "LabModels":
        from .locations import lab_root

        return cls(model_path("prior"), model_path("mlm"), model_path("judge"),
                   os.path.join(lab_root(), "captioner"))


def load_backbone(prior: str):
    from antijanus.backbones.base import BackboneOptions
    from antijanus.backbones.stable_diffusion import StableDiffusionBackbone

    return StableDiffusionBackbone(BackboneOptions(pretrained_model_name_or_path=prior,
                                                   half_precision_weights=False), torch.device("cpu"))


class PromptFactory:
    """Prompt outputs of every (variant, prompt), with the lab's models in the processors: the
    prior's text encoder, the lab masked LM as ``debias_model``, the lab captioner for DNP."""

    def __init__(self, models: LabModels, backbone=None, cache_dir: Optional[str] = None, log=print) -> None:
        from .prompt_output import PromptEncoder

        self.models = models
        self.backbone = backbone or load_backbone(models.prior)
        self.encode = PromptEncoder(self.backbone)
        self.cache_dir = cache_dir
        self.log = log
        self._scorer = None
        self._captioner = None

    def scorer(self, model: str):
        from antijanus.prompting.mlm import MaskedLMViewScorer

        if self._scorer is None:
            self._scorer = MaskedLMViewScorer(model, device="cpu")
        return self._scorer

    def auto_negative(self, prompt: str, settings: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
        """n* as ``dnp-prompt-processor`` makes it: DNS image with the prior, captioned."""
        from antijanus.prompting.captioning import check_captioner
        from antijanus.prompting.dnp import SamplingSettings, cached_dnp, load_sampler

        check_captioner(settings["captioner"], max_new_tokens=int(settings["caption_max_new_tokens"]))
        sampling = SamplingSettings(int(settings["dns_steps"]), float(settings["dns_guidance_scale"]),
                                    int(settings["dns_seed"])).validate()
        cache = os.path.join(self.cache_dir or ".", "dnp")

        def captioner():  # as dnp-prompt-processor loads it (a plugin folder or BLIP)
            from antijanus.prompting.captioning import load_captioner

            if self._captioner is None:
                self._captioner = load_captioner(settings["captioner"], device="cpu",
                                                 max_new_tokens=int(settings["caption_max_new_tokens"]))
            return self._captioner

        result = cached_dnp(prompt, self.models.prior, sampling, settings["captioner"], cache,
                            lambda: load_sampler(self.models.prior, "cpu", half_precision=False), captioner,
                            log=self.log, progress=False)
        return result.negative_prompt, {"negative_prompt": result.negative_prompt, "dns_image": result.image_path,
                                        "captioner": settings["captioner"]}

    def lab_block(self, cfg) -> Dict[str, Any]:
        values = block(cfg, "system.prompt_processor")
        values["pretrained_model_name_or_path"] = self.models.prior
        if cfg.system.prompt_processor_type == "bert-pmi-prompt-processor":
            values["debias_model"] = self.models.mlm
        if cfg.system.prompt_processor_type == "dnp-prompt-processor":
            values["captioner"] = self.models.captioner
        return values

    def __call__(self, variant: Variant, prompt: str, steps: int):
        from .prompt_output import build_prompt_output

        cfg = load_config(variant.config, variant.overrides, steps)
        debias_cache = os.path.join(self.cache_dir, "prompt_debiasing") if self.cache_dir else None
        return build_prompt_output(cfg.system.prompt_processor_type, self.lab_block(cfg), prompt, self.encode,
                                   make_scorer=self.scorer, auto_negative=self.auto_negative,
                                   debias_cache_dir=debias_cache)


# ----------------------------------------------------------------------------- runs


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


_WORKER: Dict[str, Any] = {}


def _worker_models(models: LabModels, threads: int):
    torch.set_num_threads(threads)
    if _WORKER.get("prior") != models.prior:
        _WORKER.update(prior=models.prior, backbone=load_backbone(models.prior))
    if _WORKER.get("judge_path") != models.judge:
        from .judge import Judge

        _WORKER.update(judge_path=models.judge, judge=Judge.load(models.judge))
    return _WORKER["backbone"], _WORKER["judge"]


def judge_identity(folder: str) -> str:
    """A judge's weights (its folder's other files, e.g. timings, do not change a verdict)."""
    from .judge import WEIGHTS
    from .model_files import sha256

    return sha256(os.path.join(folder, WEIGHTS))


def judge_run_orbit(frames: torch.Tensor, judge, prompt: str, settings: FastSettings) -> Dict[str, float]:
    """The Janus metric of a run's orbit (``settings``' azimuths and elevation, the prompt's kind)."""
    from .janus import orbit_metrics

    return orbit_metrics(frames, orbit_azimuths(settings.orbit_views), settings.orbit_elevation, judge,
                         kind=kind_of(prompt))


def run_one(task: RunTask) -> Dict[str, Any]:
    """Train one run, render and judge its orbit; writes orbit.png, orbit.pt and result.json."""
    backbone, judge = _worker_models(task.models, task.settings.threads)
    s, rep = task.settings, task.representation
    messages: List[str] = []
    guidance = ScoreDistillationGuidance(task.guidance, "cpu", backbone=backbone)
    guidance.info = guidance.warn = messages.append
    system = dataclasses.replace(rep.system, geometry_lr=s.lr)
    start = time.time()
    scene = make_scene(rep.volume, task.spec.seed)  # settings' volume with the config's density blob
    trained = train(guidance, task.prompt_output, scene, rep.cameras, system, rep.material, s.steps,
                    task.spec.seed, log_every=max(1, s.steps // 20))
    train_s = time.time() - start
    azimuths = orbit_azimuths(s.orbit_views)
    decode = backbone.decode_latents if s.volume.features == "latent" else None
    frames, opacity = render_orbit(scene, azimuths, s.orbit_elevation, rep.orbit_distance, rep.orbit_fovy,
                                   rep.material, s.steps, resolution=rep.cameras.height, decode=decode)
    metrics = judge_run_orbit(frames, judge, task.spec.prompt, s)
    metrics["coverage"] = float((opacity > 0.5).float().mean())
    os.makedirs(task.run_dir, exist_ok=True)
    save_orbit(task.run_dir, frames)
    result = {"variant": task.spec.variant, "prompt": task.spec.prompt, "seed": task.spec.seed, "key": task.key,
              "judge": judge_identity(task.models.judge),
              "metrics": metrics, "train_s": train_s, "total_s": time.time() - start,
              "final": {k: v[-1] for k, v in trained.history.items()}, "history": trained.history,
              "guidance_log": messages, "prompts": task.prompt_output.summary()}
    from antijanus.utils.cache import write_json

    write_json(os.path.join(task.run_dir, RESULT), result)
    return result


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Orbit frames in [0, 1] as kept on disk (and judged again from)."""
    return (frames * 255).round().to(torch.uint8)


def frames_from_uint8(frames: torch.Tensor) -> torch.Tensor:
    return frames.float() / 255.0


def save_orbit(run_dir: str, frames: torch.Tensor) -> None:
    from antijanus.utils.imaging import to_pil

    torch.save(frames_to_uint8(frames), os.path.join(run_dir, "orbit.pt"))
    strip = torch.cat(list(frames), dim=2)  # [3, H, N * W]
    to_pil(strip).save(os.path.join(run_dir, "orbit.png"))


def load_orbit_frames(run_dir: str) -> torch.Tensor:
    return frames_from_uint8(torch.load(os.path.join(run_dir, "orbit.pt")))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_tasks(tasks: Sequence[RunTask], jobs: int = 1, log=print, verdicts: bool = True) -> List[Dict[str, Any]]:
    """Run the tasks, ``jobs`` at a time in worker processes (1: in this process). A failed run
    is reported and the others go on; the failures are raised at the end. ``verdicts=False``: the
    progress lines leave out the Janus verdict and view accuracy (the calibration)."""
    results, failures = [], []

    def report(task, result):
        results.append(result)
        metrics = result["metrics"]
        shown = (f"janus {metrics['janus']:.0f} view accuracy {metrics['view_accuracy']:.2f}" if verdicts
                 else f"kind accuracy {metrics.get('kind_accuracy', math.nan):.2f} "
                      f"face in front {metrics.get('face_in_front', math.nan):.2f} coverage {metrics['coverage']:.3f}")
        log(f"[{len(results) + len(failures)}/{len(tasks)}] {task.spec.tag}: {shown} ({result['train_s']:.0f} s)")

    if jobs <= 1:
        for task in tasks:
            try:
                report(task, run_one(task))
            except Exception as error:  # noqa: BLE001 - reported, the sweep goes on
                failures.append(f"{task.spec.tag}: {type(error).__name__}: {error}")
                log(f"error: {failures[-1]}")
    elif tasks:  # nothing to do (every run finished before): no pool
        import multiprocessing as mp

        context = mp.get_context("spawn")
        with context.Pool(jobs, initializer=_init_worker, initargs=(tasks[0].settings.threads,)) as pool:
            pending = [(task, pool.apply_async(run_one, (task,))) for task in tasks]
            for task, handle in pending:
                try:
                    report(task, handle.get())
                except Exception as error:  # noqa: BLE001
                    failures.append(f"{task.spec.tag}: {type(error).__name__}: {error}")
                    log(f"error: {failures[-1]}")
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))
    return results


# ----------------------------------------------------------------------------- the experiment


@dataclass
class Experiment:
    out: str
    variants: Sequence[str] = VARIANT_NAMES
    prompts: Sequence[str] = field(default_factory=lab_prompts)
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    settings: FastSettings = FastSettings()
    models: LabModels = field(default_factory=LabModels.default)
    _key: Optional[str] = field(default=None, init=False, repr=False, compare=False)

    def specs(self) -> List[RunSpec]:
        """Seed-major order: every variant and prompt gets seed 0 before any gets seed 1."""
        return [RunSpec(v, p, s) for s in self.seeds for v in self.variants for p in self.prompts]

    def run_dir(self, spec: RunSpec) -> str:
        return os.path.join(self.out, "runs", spec.tag)

    def key(self) -> str:
        """What training depends on: the settings and the weights of the models that take part
        (prior, masked LM, captioner), not only their paths (a retrained prior runs again). The
        judge only judges: a run judged by other weights is judged again from its saved orbit."""
        if self._key is None:
            self._key = self._models_key(with_judge=False)
        return self._key

    def _models_key(self, with_judge: bool) -> str:
        """The settings and the models' paths and weights (``with_judge``: the judge's too, as the
        key of runs finished before the judge left it covered)."""
        from antijanus.utils.cache import cache_key

        from .model_files import folder_fingerprint

        models = {k: v for k, v in dataclasses.asdict(self.models).items() if with_judge or k != "judge"}
        return cache_key(settings=self.settings.to_dict(), models=models,
                         weights={name: folder_fingerprint(path) for name, path in models.items()})

    def _config_files(self, spec: Variant) -> Dict[str, str]:
        from .model_files import sha256

        return {name: sha256(name if os.path.isabs(name) else os.path.join(CONFIG_DIR, name))
                for name in (spec.config, REPRESENTATION_CONFIG)}

    def run_key(self, variant: str) -> str:
        """What a finished run of ``variant`` depends on: the experiment key, the variant's
        definition (its config and overrides; not its description) and the contents of its config
        and of the representation's config (an edited config or override runs again)."""
        from antijanus.utils.cache import cache_key

        spec = variant_by_name(variant)
        return cache_key(experiment=self.key(), variant={"name": spec.name, "config": spec.config,
                                                         "overrides": list(spec.overrides)},
                         files=self._config_files(spec))

    def _legacy_run_key(self, variant: str) -> str:
        from antijanus.utils.cache import cache_key

        spec = variant_by_name(variant)
        definition = dict(dataclasses.asdict(spec), description=_LEGACY_DESCRIPTIONS.get(variant, spec.description))
        return cache_key(experiment=self._models_key(with_judge=True), variant=definition,
                         files=self._config_files(spec))

    def judge_identity(self) -> str:
        return judge_identity(self.models.judge)

    def _finished(self, spec: RunSpec) -> Optional[Dict[str, Any]]:
        """The run's result when it finished at this key. A run keyed the old way (with the
        judge, by the judge now in place) is rewritten with the new key and its judge."""
        from antijanus.utils.cache import read_json, write_json

        path = os.path.join(self.run_dir(spec), RESULT)
        result = read_json(path)
        if result is None or result.get("variant") != spec.variant:
            return None
        if result.get("key") == self.run_key(spec.variant):
            return result
        if result.get("key") == self._legacy_run_key(spec.variant):
            result.update(key=self.run_key(spec.variant), judge=self.judge_identity())
            write_json(path, result)
            return result
        return None

    def done(self, spec: RunSpec) -> bool:
        return self._finished(spec) is not None

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
        outputs, guidances = {}, {}
        for spec in todo:
            if spec.variant not in guidances:
                variant = variant_by_name(spec.variant)
                config = guidance_config(load_config(variant.config, variant.overrides, self.settings.steps),
                                         self.models.prior)
                if self.settings.guidance_scale is not None:
                    config = dataclasses.replace(config, guidance_scale=float(self.settings.guidance_scale))
                guidances[spec.variant] = config
            if (spec.variant, spec.prompt) not in outputs:
                output = factory(variant_by_name(spec.variant), spec.prompt, self.settings.steps)
                outputs[(spec.variant, spec.prompt)] = output
                self.write_prompt_record(spec, output)
        return [RunTask(spec, outputs[(spec.variant, spec.prompt)], guidances[spec.variant], representation,
                        self.settings, self.models, self.run_dir(spec), self.run_key(spec.variant))
                for spec in todo]

    def write_prompt_record(self, spec: RunSpec, output) -> None:
        from antijanus.utils.cache import write_json

        write_json(os.path.join(self.out, "prompts", f"{spec.variant}--{slug(spec.prompt)}.json"), output.summary())

    def run(self, jobs: int = 1, log=print, verdicts: bool = True) -> Dict[str, str]:
        """Every run not done yet, then the report (``verdicts=False``: progress lines and grids
        without the judge's verdicts, and no tables: the calibration)."""
        from antijanus.utils.cache import write_json

        os.makedirs(self.out, exist_ok=True)
        write_json(os.path.join(self.out, "experiment.json"), {
            "settings": self.settings.to_dict(), "models": dataclasses.asdict(self.models),
            "variants": [dataclasses.asdict(variant_by_name(v)) for v in self.variants],
            "prompts": list(self.prompts), "seeds": list(self.seeds),
            "representation_config": REPRESENTATION_CONFIG})
        tasks = self.tasks(log)
        log(f"{len(tasks)} run(s) to do, {len(self.specs()) - len(tasks)} done before ({jobs} at a time)")
        error = None
        try:
            run_tasks(tasks, jobs, log, verdicts=verdicts)
        except RuntimeError as failed:
            error = failed
        paths = self.report(tables=verdicts)
        if error is not None:
            raise error
        return paths

    def results(self) -> List[Dict[str, Any]]:
        """The finished runs, each with the metrics of the judge now in place (a run judged by
        other weights is judged again from its saved orbit, cached beside it per judge)."""
        found = [r for r in (self._finished(spec) for spec in self.specs()) if r is not None]
        self._judge_again(found)
        self._add_late_metrics(found)
        return found

    def _judge_again(self, results: List[Dict[str, Any]]) -> None:
        from antijanus.utils.cache import read_json, write_json

        identity = self.judge_identity()
        judge = None
        for r in results:
            if r.get("judge") == identity:
                continue
            spec = RunSpec(r["variant"], r["prompt"], r["seed"])
            path = os.path.join(self.run_dir(spec), f"metrics-judge-{identity[:16]}.json")
            metrics = read_json(path)
            if metrics is None:
                if judge is None:
                    from .judge import Judge

                    judge = Judge.load(self.models.judge)
                metrics = judge_run_orbit(load_orbit_frames(self.run_dir(spec)), judge, spec.prompt, self.settings)
                metrics["coverage"] = r["metrics"]["coverage"]  # the volume's, not the judge's
                write_json(path, metrics)
            r["metrics"] = metrics
            r["judge"] = identity

    def _add_late_metrics(self, results: List[Dict[str, Any]]) -> None:
        """Metrics added after a run finished (``face_scrambled``) from its saved orbit."""
        from .janus import face_scrambled

        missing = [r for r in results if "face_scrambled" not in r["metrics"]]
        if not missing:
            return
        from .judge import Judge

        judge = Judge.load(self.models.judge)
        for r in missing:
            spec = RunSpec(r["variant"], r["prompt"], r["seed"])
            r["metrics"]["face_scrambled"] = face_scrambled(load_orbit_frames(self.run_dir(spec)), judge)

    def report(self, tables: bool = True, out: Optional[str] = None) -> Dict[str, str]:
        """table.md / table.csv / table.json and one orbit grid per variant, from the finished
        runs, into ``out`` (default: the experiment's folder; ``tables=False``: the grids alone,
        without the judge's verdicts)."""
        out = out or self.out
        results = self.results()
        paths = write_tables(results, out, list(self.variants), list(self.prompts)) if tables else {}
        for variant in self.variants:
            grid = orbit_grid([r for r in results if r["variant"] == variant], out, variant,
                              lambda r: load_orbit_frames(self.run_dir(RunSpec(r["variant"], r["prompt"], r["seed"]))),
                              verdicts=tables)
            if grid:
                paths[f"grid_{variant}"] = grid
        return paths


# ----------------------------------------------------------------------------- the table

METRICS = ("face_in_front", "face_scrambled", "view_accuracy", "a_jfd", "kind_accuracy", "coverage")
METRIC_LABELS = {"face_in_front": "face in front", "face_scrambled": "face on scrambled (control)",
                 "view_accuracy": "view accuracy", "a_jfd": "a_jfd", "kind_accuracy": "kind accuracy",
                 "coverage": "coverage"}


def summarise(results: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Janus rate with its 95 % Wilson interval (and its two parts), mean +- std of the rest."""
    from .stats import wilson_rate

    row: Dict[str, Any] = {"runs": len(results)}
    for key in ("janus", "face_in_back", "janus_two_fronts"):
        rate, (low, high) = wilson_rate([r["metrics"][key] for r in results])
        row[key] = {"rate": rate, "ci": [low, high], "count": int(sum(r["metrics"][key] >= 0.5 for r in results))}
    for key in METRICS:
        values = [float(r["metrics"][key]) for r in results if not math.isnan(r["metrics"].get(key, math.nan))]
        mean = sum(values) / len(values) if values else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        row[key] = {"mean": mean, "std": std}
    row["train_s"] = sum(r.get("train_s", math.nan) for r in results) / max(1, len(results))
    return row


def grouped(results: Sequence[Mapping[str, Any]], variants: Sequence[str], prompts: Sequence[str]):
    """(variant, group, rows) for each variant: every prompt, then the pooled groups."""
    for variant in variants:
        mine = [r for r in results if r["variant"] == variant]
        groups = [(p, [r for r in mine if r["prompt"] == p]) for p in prompts]
        groups.append(("all prompts", mine))
        groups.append(("without 'smiling'", [r for r in mine if "smiling" not in r["prompt"]]))
        groups.append(("with 'smiling'", [r for r in mine if "smiling" in r["prompt"]]))
        for name, rows in groups:
            if rows:
                yield variant, name, rows


def _rate(cell: Mapping[str, Any]) -> str:
    low, high = cell["ci"]
    return f"{cell['rate']:.2f} [{low:.2f}, {high:.2f}] ({cell['count']})"


def _mean(cell: Mapping[str, Any]) -> str:
    return "-" if math.isnan(cell["mean"]) else f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def write_tables(results: Sequence[Mapping[str, Any]], out: str, variants: Sequence[str], prompts: Sequence[str]
                 ) -> Dict[str, str]:
    from antijanus.utils.cache import write_json

    rows = [{"variant": v, "group": g, **summarise(rs)} for v, g, rs in grouped(results, variants, prompts)]
    header = ("| variant | prompts | runs | Janus rate [95 % CI] (count) | face in back | two fronts | "
              + " | ".join(METRIC_LABELS[k] for k in METRICS) + " |")
    lines = [header, "|" + " --- |" * (6 + len(METRICS))]
    pooled = [r for r in rows if r["group"] == "all prompts"]
    detail = [r for r in rows if r["group"] != "all prompts"]
    for row in pooled + detail:
        lines.append(f"| {row['variant']} | {row['group']} | {row['runs']} | {_rate(row['janus'])} | "
                     f"{_rate(row['face_in_back'])} | {_rate(row['janus_two_fronts'])} | "
                     + " | ".join(_mean(row[k]) for k in METRICS) + " |")
    paired = paired_against_baseline(results, variants)
    if paired:
        face = {r["variant"]: r["face_in_front"]["mean"] for r in pooled}
        for row in paired:
            row["reading"] = registered_reading(row["janus"]["b"], row["janus"]["c"], row["janus"]["p"],
                                                face[row["variant"]], face["baseline"], len(paired))
        lines += ["", "Paired against the baseline (the same prompt and seed; b: runs where only the baseline "
                  "has it, c: only the variant; exact McNemar p; reading: Janus at "
                  f"p < {READING_ALPHA} / {len(paired)} (Bonferroni), a reduction with face in front below "
                  f"{READING_FACE_RATIO} x the baseline's is \"fewer faces, not a cure\"):", "",
                  "| variant | pairs | Janus b / c | Janus p | face in back b / c | face in back p | reading |",
                  "|" + " --- |" * 7]
        for row in paired:
            lines.append(f"| {row['variant']} | {row['pairs']} | {row['janus']['b']} / {row['janus']['c']} | "
                         f"{row['janus']['p']:.3f} | {row['face_in_back']['b']} / {row['face_in_back']['c']} | "
                         f"{row['face_in_back']['p']:.3f} | {row['reading']} |")
    os.makedirs(out, exist_ok=True)
    md, csv_path, js = (os.path.join(out, name) for name in ("table.md", "table.csv", "table.json"))
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    import csv

    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "prompts", "runs", "janus", "janus_low", "janus_high", "face_in_back",
                         "janus_two_fronts", *[f"{k}_mean" for k in METRICS], *[f"{k}_std" for k in METRICS],
                         "train_s"])
        for row in rows:
            writer.writerow([row["variant"], row["group"], row["runs"], row["janus"]["rate"], *row["janus"]["ci"],
                             row["face_in_back"]["rate"], row["janus_two_fronts"]["rate"],
                             *[row[k]["mean"] for k in METRICS], *[row[k]["std"] for k in METRICS], row["train_s"]])
    write_json(js, {"rows": rows, "paired_against_baseline": paired})
    return {"markdown": md, "csv": csv_path, "json": js}


def paired_against_baseline(results: Sequence[Mapping[str, Any]], variants: Sequence[str],
                            keys: Sequence[str] = ("janus", "face_in_back"), reference: str = "baseline"
                            ) -> List[Dict[str, Any]]:
    """Each variant against ``reference`` on the runs both have (the same prompt and seed: the
    same scene initialisation and camera / noise draws): discordant counts and the exact McNemar
    p-value per key. Empty when the reference did not run."""
    from .stats import mcnemar_exact

    by_run = {(r["variant"], r["prompt"], r["seed"]): r["metrics"] for r in results}
    if reference not in variants:
        return []
    rows = []
    for variant in variants:
        if variant == reference:
            continue
        pairs = [(by_run[(reference, p, s)], m) for (v, p, s), m in by_run.items()
                 if v == variant and (reference, p, s) in by_run]
        if not pairs:
            continue
        row: Dict[str, Any] = {"variant": variant, "pairs": len(pairs)}
        for key in keys:
            b = sum(1 for ref, m in pairs if ref[key] >= 0.5 and m[key] < 0.5)
            c = sum(1 for ref, m in pairs if ref[key] < 0.5 and m[key] >= 0.5)
            row[key] = {"b": b, "c": c, "p": mcnemar_exact(b, c)}
        rows.append(row)
    return rows


# the reading rule written down before the confirmatory runs (custom/janus_lab/docs/preregistration.md,
# first entry): a reduction counts as one only if the variant still draws the face where it
# belongs, at least this share of the baseline's mean face_in_front
READING_FACE_RATIO = 0.8
READING_ALPHA = 0.05  # family-wise, split over the variants compared with the baseline (Bonferroni)


def registered_reading(b: int, c: int, p: float, face_in_front: float, baseline_face_in_front: float,
                       comparisons: int, alpha: float = READING_ALPHA) -> str:
    """The registered reading of one variant's Janus verdicts paired against the baseline's (b: runs
    Janus only in the baseline, c: only in the variant; p: exact McNemar): significant only at
    p < alpha / comparisons; then fewer Janus runs with the face kept in front (>= 0.8 x the
    baseline's) is "fewer Janus", with fewer faces "fewer faces, not a cure"."""
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons}")
    if not p < alpha / comparisons:
        return "not established"
    if c > b:
        return "more Janus"
    if math.isnan(face_in_front) or math.isnan(baseline_face_in_front):
        return "fewer Janus (face in front not measured)"
    if face_in_front >= READING_FACE_RATIO * baseline_face_in_front:
        return "fewer Janus"
    return "fewer faces, not a cure"


def orbit_grid(results: Sequence[Mapping[str, Any]], out: str, variant: str,
               frames_of: Callable[[Mapping[str, Any]], torch.Tensor], cell: int = 48,
               verdicts: bool = True) -> Optional[str]:
    """One image per variant: a row per (prompt, seed) with its orbit (azimuth 0 at the left),
    labelled with the prompt, the seed and (``verdicts``) the Janus verdict and view accuracy."""
    from PIL import Image, ImageDraw

    from antijanus.utils.imaging import to_pil

    if not results:
        return None
    results = sorted(results, key=lambda r: (r["prompt"], r["seed"]))
    rows = [frames_of(r) for r in results]
    views = max(len(f) for f in rows)
    label = 180
    canvas = Image.new("RGB", (label + cell * views, cell * len(results) + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for j in range(0, views, 3):
        draw.text((label + j * cell + 2, 2), f"{j}", fill="black")
    for i, (result, frames) in enumerate(zip(results, rows)):
        y = 16 + i * cell
        metrics = result["metrics"]
        verdict = "JANUS" if metrics.get("janus", 0) >= 0.5 else "ok"
        draw.text((4, y + 4), f"{result['prompt']} s{result['seed']}", fill="black")
        if verdicts:
            draw.text((4, y + 20), f"{verdict}  view acc {metrics.get('view_accuracy', float('nan')):.2f}",
                      fill="black")
        for j, frame in enumerate(frames):
            canvas.paste(to_pil(frame).resize((cell, cell)), (label + j * cell, y))
    path = os.path.join(out, "grids", f"{variant}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    canvas.save(path)
    return path


# ----------------------------------------------------------------------------- the launcher path


def janus_metrics_of_orbit(judge, elevation_deg: float) -> Callable[[torch.Tensor, torch.Tensor, str], Dict[str, float]]:
    """The extra metrics of a launcher run's orbit (``tools.evaluate.MetricModels(extra_metrics=)``):
    ``lab.janus.orbit_metrics`` at the orbit's elevation, with the prompted kind."""
    from .janus import orbit_metrics

    def metrics(frames: torch.Tensor, azimuths: torch.Tensor, prompt: str) -> Dict[str, float]:
        try:
            kind = kind_of(prompt)
        except ConfigError:
            kind = None
        return orbit_metrics(frames.cpu(), azimuths.cpu(), float(elevation_deg), judge, kind=kind)

    return metrics


def launcher_results(sweep) -> List[Dict[str, Any]]:
    """The finished, evaluated runs of a sweep (``tools.sweep.Sweep``) in the fast path's result
    form, with their orbit frames."""
    from antijanus.tools.evaluate import orbit_folder
    from antijanus.tools.metrics import load_orbit
    from antijanus.utils.cache import read_json

    found = []
    m = sweep.metrics
    for run in sweep.runs():
        metrics = read_json(os.path.join(run.run_dir, "metrics.json")) or {}
        folder = orbit_folder(run.run_dir, m.n_views, m.elevation_deg) if m is not None else None
        if "janus" not in metrics or folder is None:
            continue
        frames, _ = load_orbit(folder)
        found.append({"variant": run.variant, "prompt": run.prompt, "seed": run.seed, "metrics": metrics,
                      "train_s": math.nan, "frames": frames})
    return found


# ----------------------------------------------------------------------------- calibration


CALIBRATION_MIN_FACE_IN_FRONT = 0.5  # the rule below, written down before any world-v3 3D run
CALIBRATION_MAX_FACE_SCRAMBLED = 0.2  # added before any world-v3 run with the judge trained on scrambled negatives
CALIBRATION_TIE = 0.05
# the representations the calibration compares (listed order breaks the last tie): one 48^3 grid,
# one 24^3 grid, and the 48^3 grid with 12^3 and 24^3 levels added (hash-grid-like levels)
CALIBRATION_VOLUMES: Dict[str, VolumeSettings] = {
    "grid48": VolumeSettings(resolution=48),
    "grid24": VolumeSettings(resolution=24),
    "pyramid": VolumeSettings(resolution=48, coarse_levels=(12, 24)),
    # threestudio's Latent-NeRF: the prior's latents rendered at its latent size (README: in 2D,
    # score distillation of latents draws the face that score distillation of pixels does not)
    "latent48": VolumeSettings(resolution=48, features="latent"),
    "latent24": VolumeSettings(resolution=24, features="latent"),
}


def choose_calibration(rows: Sequence[Mapping[str, float]], min_face_in_front: float = CALIBRATION_MIN_FACE_IN_FRONT,
                       max_face_scrambled: float = CALIBRATION_MAX_FACE_SCRAMBLED,
                       tie: float = CALIBRATION_TIE) -> Tuple[Mapping[str, float], bool]:
    """The calibration's pre-written rule. ``rows``: one per setting, in the listed order, with
    ``steps``, ``lr``, the baseline's mean ``kind_accuracy``, ``face_in_front`` and
    ``face_scrambled``. Eligible: face_in_front >= ``min_face_in_front`` (the baseline draws the
    face where it belongs) and face_scrambled <= ``max_face_scrambled`` (the judge's faces need
    the face's structure; a row without it is not checked). Among them the highest kind accuracy,
    settings within ``tie`` of it tie -> fewer steps, then the larger ``guidance_scale`` (nearer
    SD's recipe; absent or None: the configs' own, the largest), then more face_in_front, then
    the listed order. None eligible: the most face_in_front, and ``False`` (the table would not measure Janus)."""
    if not rows:
        raise ValueError("the calibration has no settings")

    def number(value: float) -> float:
        return -math.inf if math.isnan(value) else value

    def control_passes(row: Mapping[str, float]) -> bool:
        value = row.get("face_scrambled")
        reconstruction = row.get("reconstruction_passed")  # None: not measured
        return (value is None or (not math.isnan(value) and value <= max_face_scrambled)) and reconstruction is not False

    order = {id(r): i for i, r in enumerate(rows)}
    eligible = [r for r in rows if number(r["face_in_front"]) >= min_face_in_front and control_passes(r)]
    if not eligible:
        return max(rows, key=lambda r: (number(r["face_in_front"]), -r["steps"], -order[id(r)])), False
    best = max(number(r["kind_accuracy"]) for r in eligible)
    tied = [r for r in eligible if number(r["kind_accuracy"]) >= best - tie]
    def scale(row: Mapping[str, float]) -> float:
        value = row.get("guidance_scale")
        return math.inf if value is None else float(value)

    return min(tied, key=lambda r: (r["steps"], -scale(r), -number(r["face_in_front"]), order[id(r)])), True


def _no_setting_passes(rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> str:
    """Why the calibration found no eligible setting, in words."""
    with_face = [r for r in rows if not math.isnan(r["face_in_front"]) and r["face_in_front"] >= CALIBRATION_MIN_FACE_IN_FRONT]
    if not with_face:
        return (f"No setting passes: in none does the baseline draw a face where it belongs (the best face in "
                f"front {best['face_in_front']:.2f} < {CALIBRATION_MIN_FACE_IN_FRONT:g}), so a 3D table at these "
                "settings measures nothing about faces.")
    causes = []
    if any(r.get("reconstruction_passed") is False for r in with_face):
        causes.append("the judge fails the reconstruction control (it misjudges known creatures through the same "
                      "representation and cameras)")
    scrambled = [r.get("face_scrambled") for r in with_face]
    if any(v is not None and math.isnan(v) for v in scrambled):
        causes.append("the scrambled control was not measured (face scrambled is NaN)")
    if any(v is not None and not math.isnan(v) and v > CALIBRATION_MAX_FACE_SCRAMBLED for v in scrambled):
        causes.append(f"the judge also sees one on scrambled pixels (face scrambled > {CALIBRATION_MAX_FACE_SCRAMBLED:g})")
    return ("No setting passes: where the baseline's front shows a face, " + "; or ".join(causes)
            + ", so its face verdicts there are not evidence and a 3D table at these settings measures nothing "
            "about faces.")


def reconstruction_for(out: str, settings: FastSettings, models: LabModels, log=print) -> Dict[str, Any]:
    """The reconstruction control (``lab.reconstruction``) at ``settings``' cameras, volume, steps
    and lr, judged by ``models.judge``. The fitted orbits are kept in ``out`` (``orbits.pt``, keyed
    on everything the fit reads: those settings, the representation built from the config, the
    control's settings and the prior's weights) and judged from the kept frames, on the first call
    as on later ones; another judge re-judges without fitting again; an unreadable kept file is
    fitted again. Writes ``reconstruction.json`` and ``reconstruction.png`` there."""
    import io

    from antijanus.utils.cache import atomic_write, cache_key, load_torch, write_json
    from antijanus.utils.imaging import to_pil
    from .judge import Judge
    from .model_files import folder_fingerprint
    from .reconstruction import FORMS, ReconstructionSettings, fit_orbits, judge_orbits

    control = ReconstructionSettings()
    representation = Representation.from_config(settings.volume, settings.steps, preset=settings.cameras)
    key = cache_key(volume=dataclasses.asdict(settings.volume), steps=settings.steps, lr=settings.lr,
                    cameras=settings.cameras, orbit_views=settings.orbit_views,
                    orbit_elevation=settings.orbit_elevation, control=dataclasses.asdict(control),
                    representation=dataclasses.asdict(representation), prior=folder_fingerprint(models.prior))
    orbits_path = os.path.join(out, "orbits.pt")
    kept = load_torch(orbits_path, lambda value: isinstance(value, dict) and {"key", "orbits"} <= set(value),
                      "a kept reconstruction")
    if kept is None or kept["key"] != key:
        torch.set_num_threads(settings.threads)
        kept = {"key": key, "orbits": fit_orbits(load_backbone(models.prior), settings, representation,
                                                 control=control, log=log)}
        buffer = io.BytesIO()
        torch.save(kept, buffer)
        atomic_write(orbits_path, lambda f: f.write(buffer.getvalue()), binary=True)
    orbits = kept["orbits"]
    result = {**judge_orbits(orbits, Judge.load(models.judge), settings), "judge": judge_identity(models.judge)}
    strips = [torch.cat(list(frames_from_uint8(orbits[(kind, form)]["frames"])), dim=2)
              for kind in KINDS for form in FORMS if (kind, form) in orbits]
    image = io.BytesIO()
    to_pil(torch.cat(strips, dim=1)).save(image, format="PNG")
    atomic_write(os.path.join(out, "reconstruction.png"), lambda f: f.write(image.getvalue()), binary=True)
    write_json(os.path.join(out, "reconstruction.json"), result)
    return result


def calibrate(out: str, steps_options: Sequence[int], lr_options: Sequence[float],
              prompts: Optional[Sequence[str]] = None, seeds: Sequence[int] = (0,),
              settings: FastSettings = FastSettings(), models: Optional[LabModels] = None, jobs: int = 1,
              log=print, volumes: Optional[Sequence[str]] = None,
              guidance_scales: Optional[Sequence[Optional[float]]] = None,
              camera_options: Optional[Sequence[str]] = None, reconstruction: bool = False) -> str:
    """The baseline alone at each (volume, steps, lr): does it form an object at all (the judge's
    kind accuracy, the face where it belongs, the scrambled control, the orbit's coverage, the
    grids)? The one choice of the representation and its run settings is made from this, before
    any method is compared. ``volumes``: names in CALIBRATION_VOLUMES (default: the settings'
    own volume only); ``guidance_scales``: the shared guidance scales tried (default: the
    settings' own; None stands for each config's own); ``camera_options``: camera presets
    (CAMERA_PRESETS; default the settings' own); ``reconstruction``: the reconstruction control
    at each (cameras, volume, steps, lr), a failed one makes its settings ineligible (latent
    volumes only). Writes calibration.md."""
    prompts = list(prompts or [p for p in lab_prompts() if "smiling" not in p])
    models = models or LabModels.default()
    for name in volumes or ():
        if name not in CALIBRATION_VOLUMES:
            raise ConfigError("volumes", name, "a calibration volume", sorted(CALIBRATION_VOLUMES))
    if volumes:
        options = [(name, CALIBRATION_VOLUMES[name]) for name in volumes]
    else:
        own = [name for name, volume in CALIBRATION_VOLUMES.items() if volume == settings.volume]
        options = [(own[0] if own else "custom", settings.volume)]
    # No Janus rate or view accuracy here: the choice must not look at what the methods change.
    scales = list(guidance_scales) if guidance_scales else [settings.guidance_scale]
    presets = list(camera_options) if camera_options else [settings.cameras]
    for preset in presets:
        if preset not in CAMERA_PRESETS:
            raise ConfigError("camera_options", preset, "camera presets", list(CAMERA_PRESETS))
    if reconstruction:
        for name, volume in options:
            if volume.features != "latent":
                raise ConfigError("volumes" if volumes else "volume", name, "the reconstruction control fits latent volumes",
                                  [n for n, v in CALIBRATION_VOLUMES.items() if v.features == "latent"])
    lines = ["| cameras | volume | guidance scale | steps | lr | runs | kind accuracy | face in front | "
             "face scrambled (control) | reconstruction control | coverage (opacity > 0.5) | s/run |",
             "|" + " --- |" * 12]
    chosen_from = []
    controls: Dict[str, Dict[str, Any]] = {}
    for preset in presets:
        for name, volume in options:
            for scale in scales:
                scale_name = "configs'" if scale is None else f"{scale:g}"
                for steps in steps_options:
                    for lr in lr_options:
                        run_settings = dataclasses.replace(settings, steps=int(steps), lr=float(lr), volume=volume,
                                                           guidance_scale=scale, cameras=preset)
                        base = ("" if preset == "configs" else f"cam-{preset}-") + f"{name}-steps{steps}-lr{lr:g}"
                        folder = base + ("" if scale is None else f"-cfg{scale:g}")
                        control_text, passed = "-", None
                        if reconstruction:
                            if base not in controls:
                                controls[base] = reconstruction_for(os.path.join(out, "reconstruction", base),
                                                                    run_settings, models, log)
                            verdict = controls[base]["verdict"]
                            passed = bool(verdict["passed"])
                            control_text = (("passed" if passed else "failed") +
                                            f" (face {verdict['face_in_front_face']:.2f}, Janus {verdict['janus_face']}/3;"
                                            f" faceless {verdict['face_in_front_faceless']:.2f};"
                                            f" two-faced Janus {verdict['janus_two_faced']}/3)")
                        experiment = Experiment(os.path.join(out, folder), variants=("baseline",), prompts=prompts,
                                                seeds=tuple(seeds), settings=run_settings, models=models)
                        experiment.run(jobs, log, verdicts=False)
                        row = summarise(experiment.results())
                        lines.append(f"| {preset} | {name} | {scale_name} | {steps} | {lr:g} | {row['runs']} | "
                                     f"{_mean(row['kind_accuracy'])} | {_mean(row['face_in_front'])} | "
                                     f"{_mean(row['face_scrambled'])} | {control_text} | {_mean(row['coverage'])} | "
                                     f"{row['train_s']:.0f} |")
                        chosen_from.append({"cameras": preset, "volume": name, "guidance_scale": scale,
                                            "steps": int(steps), "lr": float(lr),
                                            "kind_accuracy": row["kind_accuracy"]["mean"],
                                            "face_in_front": row["face_in_front"]["mean"],
                                            "face_scrambled": row["face_scrambled"]["mean"],
                                            "reconstruction_passed": passed})
    chosen, measures = choose_calibration(chosen_from)
    scale = chosen.get("guidance_scale")
    lines.append("")
    lines.append(f"Rule (face in front >= {CALIBRATION_MIN_FACE_IN_FRONT:g} and face scrambled <= "
                 f"{CALIBRATION_MAX_FACE_SCRAMBLED:g}"
                 + (" and the reconstruction control passed" if reconstruction else "")
                 + f", then the highest kind accuracy, ties within "
                 f"{CALIBRATION_TIE:g} -> fewer steps, then the larger guidance scale, then more face in "
                 f"front, then the listed setting): **{chosen['cameras']} cameras, {chosen['volume']}, "
                 + ("" if scale is None else f"guidance scale {scale:g}, ")
                 + f"{chosen['steps']} steps, lr {chosen['lr']:g}**"
                 + ("." if measures else ". " + _no_setting_passes(chosen_from, chosen)))
    path = os.path.join(out, "calibration.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
