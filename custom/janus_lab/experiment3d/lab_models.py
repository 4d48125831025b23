"""The lab's models a 3D run uses (their folders), and the prior loaded as the guidance's backbone."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from antijanus.backbones.base import BackboneOptions
from antijanus.backbones.stable_diffusion import StableDiffusionBackbone

from ..locations import lab_root
from ..model_files import model_path

TRAINING_MODELS = ("prior", "mlm", "captioner")  # the models a run's training reads (not the judge)


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
        return cls(model_path("prior"), model_path("mlm"), model_path("judge"),
                   os.path.join(lab_root(), "captioner"))


def load_backbone(prior: str) -> StableDiffusionBackbone:
    """The prior as the guidance's backbone, fp32 on the CPU (the CPU mode's setting)."""
    return StableDiffusionBackbone(BackboneOptions(pretrained_model_name_or_path=prior,
                                                   half_precision_weights=False), torch.device("cpu"))
