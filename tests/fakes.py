"""Stand-ins shared by test files of several parts: a deterministic backbone, cameras, a
threestudio system that drives a guidance, a Stable Diffusion folder with DDPM's linear schedule."""

import json
import os
import shutil
import types

import torch


class FakeBackbone:
    """Deterministic stand-in: eps = x_t * mean(emb) + std(emb), per row; records calls."""

    num_train_timesteps = 1000

    def __init__(self):
        self.alphas_cumprod = torch.linspace(0.9999, 0.005, 1000)
        self.calls = []
        self.encoded = []

    def to_model_space(self, rgb_bchw, rgb_as_latents=False):
        return rgb_bchw.float()

    def predict_noise(self, x_t, t, text_embeddings):
        self.calls.append(x_t.shape[0])
        scale = text_embeddings.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        shift = text_embeddings.std(dim=(1, 2)).view(-1, 1, 1, 1)
        return x_t * scale + shift

    def predict_noise_and_variance(self, x_t, t, text_embeddings):
        return self.predict_noise(x_t, t, text_embeddings), None

    def noise_schedule(self, sjc=False):
        return self.alphas_cumprod

    def encode_prompts(self, prompts):
        self.encoded.append(list(prompts))
        return torch.zeros(len(prompts), 77, 32)


CAMERAS = dict(  # front (r=1), front<->side, back (r=0), overhead
    elevation=torch.tensor([0.0, 10.0, 0.0, 80.0]),
    azimuth=torch.tensor([0.0, 45.0, 180.0, 30.0]),
    camera_distances=torch.full((4,), 2.0),
)


SYSTEM_CAMERAS = dict(  # what FakeSystem renders from: two views, one near the back
    elevation=torch.tensor([0.0, 15.0]),
    azimuth=torch.tensor([-100.0, 170.0]),
    camera_distances=torch.tensor([2.0, 2.0]),
)


class FakeSystem:
    """What calls a guidance in threestudio: a system (LightningModule) whose ``_trainer`` is the
    running trainer; ``do_update_step`` at each batch start, ``__call__`` in training_step."""

    def __init__(self, guidance, max_steps):
        self.guidance = guidance
        self._trainer = types.SimpleNamespace(max_steps=max_steps)

    def on_train_batch_start(self, global_step):
        self.guidance.do_update_step(0, global_step)

    def training_step(self, rgb, prompt_utils):
        return self.guidance(rgb, prompt_utils, **SYSTEM_CAMERAS)


def with_linear_schedule(folder: str, copy_to: str) -> str:
    """A copy of an SD folder whose scheduler is DDPM's linear schedule (beta 1e-4 -> 0.02), not
    SD's scaled-linear one, so that forcing SJC's schedule is visible; x0 not clipped (as SD's
    own scheduler config)."""
    shutil.copytree(folder, copy_to)
    path = os.path.join(copy_to, "scheduler", "scheduler_config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)
    with open(path, "w") as f:
        json.dump(config, f)
    return copy_to


class SmilingScorer:
    """Stand-in masked LM: "smiling" pulls towards the front view; everything else is neutral."""

    def __init__(self, *args, **kwargs):
        pass

    def view_probabilities(self, prompts, view_words):
        rows = [[0.1, 0.75, 0.05, 0.1] if "smiling" in p else [0.25] * 4 for p in prompts]
        return torch.tensor(rows, dtype=torch.float64)


def make_sd512(folder: str, time_embedding_dim=None) -> str:
    """A tiny SD folder with SD's own geometry (``antijanus.testing.tiny_models.make_sd512``, shared
    with scripts/bench_vsd.py); ``time_embedding_dim`` 1280 for VSD's camera embedding."""
    from antijanus.testing.tiny_models import make_sd512 as make  # deferred: slow import (diffusers)

    return make(folder, time_embedding_dim)


def threestudio_root() -> str:
    """The threestudio checkout this test run imports (the threestudio tier)."""
    import threestudio  # threestudio tier only

    return os.path.dirname(os.path.dirname(threestudio.__file__))


def launcher_env(**more) -> dict:
    """The environment of a CPU-mode launcher run: no hub, threestudio importable, ``more``."""
    return dict(os.environ, HF_HUB_OFFLINE="1", **more,
                PYTHONPATH=os.pathsep.join([threestudio_root(), os.environ.get("PYTHONPATH", "")]))

