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

    variants                the variants, the lab prompts, configs loaded (``load_config``, ``block``,
                            ``guidance_config``)
    settings                ``FastSettings``, the camera presets, the shared ``Representation``
    lab_models              ``LabModels`` (the model folders) and the prior as a backbone
    prompts                 ``PromptFactory``: each (variant, prompt)'s prompt output
    keys                    content keys of the experiment and its runs (no paths)
    runs                    ``RunSpec``, ``RunTask``, ``run_one`` and ``run_tasks`` (the runs in
                            ``janus_lab.worker_pool``)
    experiment              ``Experiment``: finished runs, tasks, results, report
    tables                  the tables, the paired comparison and its registered reading
    grids                   the orbit grids
    launcher                the launcher path's results and its Janus metric
    reconstruction_control  the reconstruction control at a run setting, kept and judged
    calibration             the baseline over a grid of settings and the rule that picks one

A run's orbit is kept and judged by ``lab.volume_orbits`` (shared with ``lab.reconstruction``).
The names below are the experiment's public ones, importable from here.
"""

from .calibration import (CALIBRATION_VOLUMES, CalibrationGrid, CalibrationPoint, calibrate,
                          choose_calibration)
from .experiment import Experiment
from .grids import orbit_grid
from .keys import experiment_key, judge_identity, model_identity, run_key
from .lab_models import LabModels, load_backbone
from .launcher import janus_metrics_of_orbit, launcher_results
from .prompts import PromptFactory
from .reconstruction_control import reconstruction_for
from .runs import RESULT, RunsFailed, RunSpec, RunTask, run_one, run_tasks, worker_models
from .settings import CAMERA_PRESETS, FastSettings, Representation, prior_camera_overrides, prior_framed
from .tables import paired_against_baseline, registered_reading, summarise, write_tables
from .variants import (REPRESENTATION_CONFIG, VARIANT_NAMES, VARIANTS, Variant, block, guidance_config, lab_prompts,
                       load_config, variant_by_name)

__all__ = [
    "CALIBRATION_VOLUMES", "CAMERA_PRESETS", "REPRESENTATION_CONFIG", "RESULT", "VARIANTS", "VARIANT_NAMES",
    "CalibrationGrid", "CalibrationPoint", "Experiment", "FastSettings", "LabModels", "PromptFactory",
    "Representation", "RunSpec", "RunTask", "RunsFailed", "Variant", "block", "calibrate", "choose_calibration",
    "experiment_key", "guidance_config", "janus_metrics_of_orbit", "judge_identity", "lab_prompts",
    "launcher_results", "load_backbone", "load_config", "model_identity", "orbit_grid",
    "paired_against_baseline", "prior_camera_overrides", "prior_framed", "reconstruction_for",
    "registered_reading", "run_key", "run_one", "run_tasks", "summarise", "variant_by_name", "worker_models",
    "write_tables",
]
