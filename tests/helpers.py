"""Test helpers: a PromptProcessorOutput with threestudio's attributes and conventions, a fake
threestudio system, a one-thread fixture."""

import os
from dataclasses import dataclass
from typing import Callable, Dict, List

import pytest
import torch


@dataclass
class Direction:
    name: str
    condition: Callable


@dataclass
class FakePromptOutput:
    text_embeddings: torch.Tensor
    uncond_text_embeddings: torch.Tensor
    text_embeddings_vd: torch.Tensor
    uncond_text_embeddings_vd: torch.Tensor
    directions: List[Direction]
    direction2idx: Dict[str, int]


def shift(azi):
    return (azi + 180) % 360 - 180


def threestudio_directions(front=45.0, back=45.0, overhead=60.0):
    """threestudio's order and conditions: side (default), front, back, overhead."""
    return [
        Direction("side", lambda e, a, d: torch.ones_like(e, dtype=torch.bool)),
        Direction("front", lambda e, a, d: (shift(a) > -front) & (shift(a) < front)),
        Direction("back", lambda e, a, d: (shift(a) > 180 - back) | (shift(a) < -180 + back)),
        Direction("overhead", lambda e, a, d: e > overhead),
    ]


def make_prompt_output(tokens=77, features=32, negative_equals_empty=True, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    directions = threestudio_directions()
    vd = torch.randn(4, tokens, features, generator=g) * scale
    if negative_equals_empty:
        uncond = torch.zeros(1, tokens, features)
    else:
        uncond = torch.randn(1, tokens, features, generator=g) * scale
    return FakePromptOutput(
        text_embeddings=torch.randn(1, tokens, features, generator=g) * scale,
        uncond_text_embeddings=uncond,
        text_embeddings_vd=vd,
        uncond_text_embeddings_vd=uncond.expand(4, -1, -1).clone(),
        directions=directions,
        direction2idx={d.name: i for i, d in enumerate(directions)},
    )


class FakeSystem:
    """What the launcher gives a threestudio system: its save folder, <trial>/save."""

    def __init__(self, trial):
        self._save_dir = os.path.join(trial, "save")

    def get_save_dir(self):
        return self._save_dir

    def on_fit_start(self, name, config):  # as threestudio's systems create their processor
        import threestudio

        self.prompt_processor = threestudio.find(name)(config)
        return self.prompt_processor


@pytest.fixture(scope="module")
def one_thread():
    """The lab's small models run several times faster on one thread on the shared CPU (use
    with ``pytestmark = pytest.mark.usefixtures("one_thread")`` or as an argument)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository's root
