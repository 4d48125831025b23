"""The calibration: the baseline alone at each setting of a grid (camera preset x volume x
guidance scale x steps x lr), measured by what the methods do not target (the judge's kind
accuracy, the face where it belongs, the scrambled control, optionally the reconstruction
control), and the one setting chosen by the pre-written rule (``choose_calibration``), before
any method is compared. No Janus rate or view accuracy is shown here."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from antijanus.utils.errors import ConfigError

from ..fast3d import VolumeSettings
from .experiment import Experiment
from .lab_models import LabModels
from .reconstruction_control import reconstruction_for
from .settings import CAMERA_PRESETS, FastSettings
from .tables import format_mean, markdown_table, summarise
from .variants import lab_prompts

# the rule (custom/janus_lab/docs/preregistration.md; README, "The 3D experiment")
CALIBRATION_MIN_FACE_IN_FRONT = 0.5  # eligible: the baseline's mean face in front at least this
CALIBRATION_MAX_FACE_SCRAMBLED = 0.2  # ... and its face on scrambled pixels at most this
CALIBRATION_TIE = 0.05  # kind accuracies within this of the best tie
# the representations the calibration compares (listed order breaks the last tie): one 48^3 grid,
# one 24^3 grid, the 48^3 grid with 12^3 and 24^3 levels added (hash-grid-like levels), and
# threestudio's Latent-NeRF (the prior's latents rendered at its latent size) at 48^3 and 24^3
CALIBRATION_VOLUMES: Dict[str, VolumeSettings] = {
    "grid48": VolumeSettings(resolution=48),
    "grid24": VolumeSettings(resolution=24),
    "pyramid": VolumeSettings(resolution=48, coarse_levels=(12, 24)),
    "latent48": VolumeSettings(resolution=48, features="latent"),
    "latent24": VolumeSettings(resolution=24, features="latent"),
}
TABLE_HEADER = ("cameras", "volume", "guidance scale", "steps", "lr", "runs", "kind accuracy", "face in front",
                "face scrambled (control)", "reconstruction control", "coverage (opacity > 0.5)", "s/run")


@dataclass(frozen=True)
class CalibrationPoint:
    """One setting of the grid: the volume's name and the run settings there."""

    volume: str
    settings: FastSettings

    @property
    def control_folder(self) -> str:
        """What the reconstruction control depends on (cameras, volume, steps, lr), as a folder name."""
        s = self.settings
        return ("" if s.cameras == "configs" else f"cam-{s.cameras}-") + f"{self.volume}-steps{s.steps}-lr{s.lr:g}"

    @property
    def folder(self) -> str:
        scale = self.settings.guidance_scale
        return self.control_folder + ("" if scale is None else f"-cfg{scale:g}")


@dataclass(frozen=True)
class CalibrationGrid:
    """The settings the calibration tries: every combination, cameras outermost, lr innermost."""

    steps_options: Sequence[int] = (300, 600)
    lr_options: Sequence[float] = (0.03, 0.1)
    volumes: Optional[Sequence[str]] = None  # names in CALIBRATION_VOLUMES (None: the settings' own volume)
    # shared guidance scales (None: the settings' own; a None in the list: each config's own)
    guidance_scales: Optional[Sequence[Optional[float]]] = None
    camera_options: Optional[Sequence[str]] = None  # camera presets (None: the settings' own)
    reconstruction: bool = False  # the reconstruction control at each setting (latent volumes only)

    def named_volumes(self, settings: FastSettings) -> List[Tuple[str, VolumeSettings]]:
        """The volumes tried, by name (the settings' own: its calibration name, or "custom")."""
        for name in self.volumes or ():
            if name not in CALIBRATION_VOLUMES:
                raise ConfigError("volumes", name, "a calibration volume", sorted(CALIBRATION_VOLUMES))
        if self.volumes:
            return [(name, CALIBRATION_VOLUMES[name]) for name in self.volumes]
        own = [name for name, volume in CALIBRATION_VOLUMES.items() if volume == settings.volume]
        return [(own[0] if own else "custom", settings.volume)]

    def points(self, settings: FastSettings) -> List[CalibrationPoint]:
        """Every setting of the grid, ``settings`` elsewhere; bad options are a ConfigError naming them."""
        volumes = self.named_volumes(settings)
        presets = list(self.camera_options) if self.camera_options else [settings.cameras]
        for preset in presets:
            if preset not in CAMERA_PRESETS:
                raise ConfigError("camera_options", preset, "camera presets", list(CAMERA_PRESETS))
        if self.reconstruction:
            for name, volume in volumes:
                if volume.features != "latent":
                    raise ConfigError("volumes" if self.volumes else "volume", name,
                                      "the reconstruction control fits latent volumes",
                                      [n for n, v in CALIBRATION_VOLUMES.items() if v.features == "latent"])
        scales = list(self.guidance_scales) if self.guidance_scales else [settings.guidance_scale]
        return [CalibrationPoint(name, dataclasses.replace(settings, steps=int(steps), lr=float(lr), volume=volume,
                                                           guidance_scale=scale, cameras=preset))
                for preset, (name, volume), scale, steps, lr
                in itertools.product(presets, volumes, scales, self.steps_options, self.lr_options)]


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

    def scale(row: Mapping[str, float]) -> float:
        value = row.get("guidance_scale")
        return math.inf if value is None else float(value)

    order = {id(r): i for i, r in enumerate(rows)}
    eligible = [r for r in rows if number(r["face_in_front"]) >= min_face_in_front and control_passes(r)]
    if not eligible:
        return max(rows, key=lambda r: (number(r["face_in_front"]), -r["steps"], -order[id(r)])), False
    best = max(number(r["kind_accuracy"]) for r in eligible)
    tied = [r for r in eligible if number(r["kind_accuracy"]) >= best - tie]
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


def control_cell(verdict: Mapping[str, Any]) -> str:
    """The reconstruction control's verdict in a table cell."""
    return (("passed" if verdict["passed"] else "failed")
            + f" (face {verdict['face_in_front_face']:.2f}, Janus {verdict['janus_face']}/3;"
            f" faceless {verdict['face_in_front_faceless']:.2f}; two-faced Janus {verdict['janus_two_faced']}/3)")


def measured_row(point: CalibrationPoint, summary: Mapping[str, Any], passed: Optional[bool]) -> Dict[str, Any]:
    """The rule's row of one setting (``choose_calibration``)."""
    s = point.settings
    return {"cameras": s.cameras, "volume": point.volume, "guidance_scale": s.guidance_scale, "steps": s.steps,
            "lr": s.lr, "kind_accuracy": summary["kind_accuracy"]["mean"],
            "face_in_front": summary["face_in_front"]["mean"], "face_scrambled": summary["face_scrambled"]["mean"],
            "reconstruction_passed": passed}


def table_cells(point: CalibrationPoint, summary: Mapping[str, Any], control: str) -> List[str]:
    """One setting's cells of calibration.md (TABLE_HEADER)."""
    s = point.settings
    scale = "configs'" if s.guidance_scale is None else f"{s.guidance_scale:g}"
    return [s.cameras, point.volume, scale, str(s.steps), f"{s.lr:g}", str(summary["runs"]),
            format_mean(summary["kind_accuracy"]), format_mean(summary["face_in_front"]),
            format_mean(summary["face_scrambled"]), control, format_mean(summary["coverage"]),
            f"{summary['train_s']:.0f}"]


def rule_sentence(chosen: Mapping[str, Any], measures: bool, rows: Sequence[Mapping[str, Any]],
                  reconstruction: bool) -> str:
    """The rule as applied, in bold the setting it chose (and why none passed, if so)."""
    scale = chosen.get("guidance_scale")
    return (f"Rule (face in front >= {CALIBRATION_MIN_FACE_IN_FRONT:g} and face scrambled <= "
            f"{CALIBRATION_MAX_FACE_SCRAMBLED:g}"
            + (" and the reconstruction control passed" if reconstruction else "")
            + f", then the highest kind accuracy, ties within {CALIBRATION_TIE:g} -> fewer steps, then the larger "
            "guidance scale, then more face in front, then the listed setting): "
            f"**{chosen['cameras']} cameras, {chosen['volume']}, "
            + ("" if scale is None else f"guidance scale {scale:g}, ")
            + f"{chosen['steps']} steps, lr {chosen['lr']:g}**"
            + ("." if measures else ". " + _no_setting_passes(rows, chosen)))


def calibrate(out: str, grid: CalibrationGrid = CalibrationGrid(), prompts: Optional[Sequence[str]] = None,
              seeds: Sequence[int] = (0,), settings: FastSettings = FastSettings(),
              models: Optional[LabModels] = None, jobs: int = 1, log=print) -> str:
    """The baseline alone at each setting of ``grid`` (``settings`` elsewhere; ``prompts``
    default: the lab prompts without "smiling"), each with the reconstruction control first when
    the grid asks for it (a failed control makes its setting ineligible). Writes and returns
    ``out``/calibration.md: the table and the rule's choice."""
    prompts = list(prompts or [p for p in lab_prompts() if "smiling" not in p])
    models = models or LabModels.default()
    cells, rows = [], []
    controls: Dict[str, Dict[str, Any]] = {}  # per control folder: fitted once for every guidance scale
    for point in grid.points(settings):
        control, passed = "-", None
        if grid.reconstruction:
            if point.control_folder not in controls:
                controls[point.control_folder] = reconstruction_for(
                    os.path.join(out, "reconstruction", point.control_folder), point.settings, models, log)
            verdict = controls[point.control_folder]["verdict"]
            control, passed = control_cell(verdict), bool(verdict["passed"])
        experiment = Experiment(os.path.join(out, point.folder), variants=("baseline",), prompts=prompts,
                                seeds=tuple(seeds), settings=point.settings, models=models)
        experiment.run(jobs, log, verdicts=False)
        summary = summarise(experiment.results())
        cells.append(table_cells(point, summary, control))
        rows.append(measured_row(point, summary, passed))
    chosen, measures = choose_calibration(rows)
    lines = markdown_table(TABLE_HEADER, cells) + ["", rule_sentence(chosen, measures, rows, grid.reconstruction)]
    path = os.path.join(out, "calibration.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
