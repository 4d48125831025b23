"""Stand-ins shared by the lab's tests."""

import torch

from janus_lab.judge import JudgeNet
from janus_lab.world import ATTRIBUTES, VIEWS


class ScriptedJudge:
    """Answers with given views and face flags; its features are a small random JudgeNet's."""

    def __init__(self, views, faces):
        torch.manual_seed(0)
        self.net = JudgeNet(4).eval()
        self.views, self.faces = views, faces

    def __call__(self, images):
        n = images.shape[0]
        view = torch.tensor([VIEWS.index(v) for v in self.views])
        attributes = torch.zeros(n, len(ATTRIBUTES))
        attributes[:, ATTRIBUTES.index("face")] = torch.tensor([float(f) for f in self.faces])
        return {"view": view, "view_probs": torch.nn.functional.one_hot(view, len(VIEWS)).float(),
                "kind": torch.zeros(n, dtype=torch.long), "kind_probs": torch.eye(3)[[0] * n],
                "attributes": attributes > 0.5, "attribute_probs": attributes}
