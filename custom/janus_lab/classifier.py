"""The lab judge as a view classifier for the research tools (``tools.metrics.ViewClassifier``).

``JudgeViewClassifier`` answers ``view_scores(images, prompt, views)`` with the judge's view
probabilities (softmax over the world's four regions: side, front, back, overhead), one column
per requested view. It plugs in wherever CLIP zero-shot would classify views:

    from janus_lab.classifier import JudgeViewClassifier
    classifier = JudgeViewClassifier.load()                      # the committed judge
    MetricModels(settings, view_classifier=classifier)          # metrics of a run: judge_<view>_in_region
    evaluate_runs(sweep, models=MetricModels(settings, view_classifier=classifier))   # a sweep
    run_view_experiment(sampler, classifier, experiment)        # the 2D experiment (tools/view2d)

The judge looks at the image only: the prompt is ignored (it knows the world's three kinds,
whatever the prompt says). Columns of requested views keep the judge's probabilities, so a frame
the judge calls "overhead" scores low on every one of side/front/back.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from antijanus.utils.errors import ConfigError
from .judge import Judge
from .model_files import model_path
from .world import VIEWS


class JudgeViewClassifier:
    """``tools.metrics.ViewClassifier`` backed by the lab judge (``janus_lab.judge.Judge``)."""

    def __init__(self, judge, name: str = "judge") -> None:
        self.judge, self.name = judge, name

    @classmethod
    def load(cls, folder: Optional[str] = None, device: str = "cpu", name: str = "judge") -> "JudgeViewClassifier":
        """The judge in ``folder`` (default: the committed ``models/judge``)."""
        folder = folder or model_path("judge")
        if not os.path.isdir(folder):
            raise ConfigError("judge", folder, "lab judge folder does not exist")
        return cls(Judge.load(folder, device), name)

    def view_scores(self, images: Tensor, prompt: str, views: Sequence[str]) -> Tensor:
        """[N, len(views)]: the judge's probability that each image shows each view."""
        unknown = [v for v in views if v not in VIEWS]
        if unknown:
            raise ConfigError("views", unknown, "the lab judge knows only its world's view regions", VIEWS)
        probs = self.judge(images)["view_probs"].float().cpu()
        return probs[:, [VIEWS.index(v) for v in views]]

    @torch.no_grad()
    def judged_views(self, images: Tensor) -> list:
        """The judge's own answer (argmax over all four regions) per image."""
        return [VIEWS[i] for i in self.judge(images)["view"].tolist()]
