"""What a 3D run's result depends on, by content only: the run settings, the weights of the
models that take part in training (prior, masked LM, captioner), the variant's method (its
overrides) and the contents of its config files. No path enters a key: models or configs moved
or copied elsewhere keep their finished runs. The judge only judges: its weights are recorded
beside a result (``judge_identity``), and a run judged by other weights is judged again."""

from __future__ import annotations

import os
from typing import Dict

from antijanus.utils.cache import cache_key

from ..captioner import plugin_judge_folder
from ..judge import judge_identity
from ..model_files import folder_fingerprint, sha256
from .lab_models import TRAINING_MODELS, LabModels
from .settings import FastSettings
from .variants import REPRESENTATION_CONFIG, Variant, config_path


def model_identity(model: str) -> str:
    """A model folder's fingerprint (its files' names and contents; a lab captioner folder also
    the weights of the judge it reads); a name that is no folder (a hub model id) stands for itself."""
    if not os.path.isdir(model):
        return f"name:{model}"
    judge = plugin_judge_folder(model)
    if judge is None:
        return folder_fingerprint(model)
    return cache_key(folder=folder_fingerprint(model), judge=judge_identity(judge))


def experiment_key(settings: FastSettings, models: LabModels) -> str:
    """The settings and the weights of the models that take part in training."""
    return cache_key(settings=settings.to_dict(),
                     weights={name: model_identity(getattr(models, name)) for name in TRAINING_MODELS})


def config_digests(variant: Variant) -> Dict[str, str]:
    """The contents of the variant's config and of the representation's config."""
    return {"variant": sha256(config_path(variant.config)),
            "representation": sha256(config_path(REPRESENTATION_CONFIG))}


def run_key(experiment: str, variant: Variant) -> str:
    """What a finished run of ``variant`` depends on: the experiment key, the variant's name and
    overrides (not its description) and its configs' contents."""
    return cache_key(experiment=experiment, variant={"name": variant.name, "overrides": list(variant.overrides)},
                     files=config_digests(variant))
