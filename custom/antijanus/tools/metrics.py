"""View-consistency metrics of a finished run (D-SDS Sec. 5 / docs/algorithms.md section 2d).

- A-LPIPS: LPIPS between adjacent renders of an orbit of uniformly spaced azimuths at one
  elevation, averaged (lower = more view-consistent). threestudio's test split renders
  ``n_test_views`` azimuths linspace(0, 360, n) at ``eval_elevation_deg`` (set
  ``data.n_test_views=100`` for the paper's 100); the last frame repeats the first, so adjacent
  pairs are (i, i+1) without wrapping around.
- Per-azimuth CLIP similarity between each render and each view-augmented prompt
  ("<prompt>, front view", ...), and CLIP R-precision-style fidelity (the render's similarity to
  its prompt ranked among distractor prompts).

LPIPS here is the LPIPS network (Zhang et al. 2018) written in plain PyTorch, with the VGG16
(the D-SDS notebook's choice) or AlexNet (the lpips package's default) backbone in torchvision's
feature layout (so torchvision's ``vgg16`` / ``alexnet`` weights load as they are) and the LPIPS
linear heads (the ``lpips`` package's ``weights/v0.1/{vgg,alex}.pth``), without torchvision.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from typing import Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..utils.errors import ConfigError
from ..utils.imaging import to_pil
from ..utils.loading import check_model_path, load_pretrained, looks_local

# torchvision feature stacks: (out channels, kernel, stride, padding) convs, "M" max-pools; LPIPS
# reads the ReLU after the listed convs (VGG16: conv1_2, 2_2, 3_3, 4_3, 5_3; AlexNet: conv1..5).
_NETS = {
    "vgg": dict(layers=[(64, 3, 1, 1), (64, 3, 1, 1), "M2", (128, 3, 1, 1), (128, 3, 1, 1), "M2",
                        (256, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), "M2", (512, 3, 1, 1), (512, 3, 1, 1),
                        (512, 3, 1, 1), "M2", (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1)],
                taps=(3, 8, 15, 22, 29), channels=(64, 128, 256, 512, 512), weights="vgg16-*.pth",
                min_size=16),
    "alex": dict(layers=[(64, 11, 4, 2), "M3", (192, 5, 1, 2), "M3", (384, 3, 1, 1), (256, 3, 1, 1),
                         (256, 3, 1, 1)],
                 taps=(1, 4, 7, 9, 11), channels=(64, 192, 384, 256, 256), weights="alexnet-*.pth",
                 min_size=31),
}
LPIPS_NETS = tuple(_NETS)
# LPIPS ScalingLayer: inputs in [-1, 1] are shifted and scaled before VGG
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class LPIPS(nn.Module):
    """LPIPS distance d(x, y) for images in [0, 1], [B, 3, H, W] -> [B]; net "vgg" or "alex"."""

    def __init__(self, net: str = "vgg", backbone_weights: Optional[str] = None,
                 lpips_weights: Optional[str] = None, random_weights: bool = False,
                 keys: Tuple[str, str] = ("lpips_backbone", "lpips_lin")) -> None:
        """``keys``: the configuration keys of the two weight files, named in errors."""
        super().__init__()
        if net not in _NETS:
            raise ConfigError("lpips_net", net, "unknown LPIPS network", LPIPS_NETS)
        self.net = net
        spec = _NETS[net]
        layers: List[nn.Module] = []
        channels = 3
        for layer in spec["layers"]:
            if isinstance(layer, str):  # "M2" / "M3": max-pool of that size, stride 2
                layers.append(nn.MaxPool2d(kernel_size=int(layer[1]), stride=2))
            else:
                out, kernel, stride, padding = layer
                layers += [nn.Conv2d(channels, out, kernel, stride, padding), nn.ReLU(inplace=False)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.taps_at = spec["taps"]
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in spec["channels"]])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        if random_weights:  # tests / speed only; LPIPS's learned heads are non-negative
            for lin in self.lins:
                lin.weight.data.abs_()
        else:
            self.load_weights(backbone_weights, lpips_weights, keys)
        self.eval().requires_grad_(False)

    def load_weights(self, backbone_weights: Optional[str], lpips_weights: Optional[str],
                     keys: Tuple[str, str] = ("lpips_backbone", "lpips_lin")) -> None:
        pattern = _NETS[self.net]["weights"]
        backbone_weights = backbone_weights or _default_backbone_weights(pattern)
        lpips_weights = lpips_weights or _default_lpips_weights(self.net)
        wanted = (f"torchvision's {'vgg16' if self.net == 'vgg' else 'alexnet'} state dict ({pattern}; "
                  f"default: the torch hub cache, {_hub_checkpoints()})",
                  f"the lpips package's weights/v0.1/{self.net}.pth (default: from the installed lpips package)")
        for key, path, what in zip(keys, (backbone_weights, lpips_weights), wanted):
            if not path or not os.path.exists(path):
                raise ConfigError(key, path, f"LPIPS-{self.net} weights file not found: give {what}; "
                                  "without weight files (tests, timing) use random LPIPS weights "
                                  "(random_lpips: true, --random-lpips)")
        state = torch.load(backbone_weights, map_location="cpu")
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict(features)
        lin_state = torch.load(lpips_weights, map_location="cpu")
        for i, lin in enumerate(self.lins):  # lpips keys: lin{i}.model.1.weight
            lin.weight.data.copy_(lin_state[f"lin{i}.model.1.weight"])

    def taps(self, x: Tensor) -> List[Tensor]:
        outs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps_at:
                outs.append(x)
                if len(outs) == len(self.taps_at):
                    break
        return outs

    @torch.no_grad()
    def forward(self, x: Tensor, y: Tensor, scaled: bool = False) -> Tensor:
        """Images in [0, 1] (mapped to LPIPS's [-1, 1]); ``scaled=True``: already in the network's
        input convention (e.g. CLIP-normalised, as the D-SDS notebook feeds them)."""
        if not scaled:
            x, y = x * 2.0 - 1.0, y * 2.0 - 1.0
        x = (x - self.shift) / self.scale
        y = (y - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, self.taps(x), self.taps(y)):
            fx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total


def _hub_checkpoints() -> str:
    return os.path.join(os.path.expanduser(os.environ.get("TORCH_HOME", "~/.cache/torch")), "hub", "checkpoints")


def _default_backbone_weights(pattern: str) -> Optional[str]:
    found = sorted(glob.glob(os.path.join(_hub_checkpoints(), pattern)))
    return found[0] if found else None


def _default_lpips_weights(net: str) -> Optional[str]:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "weights", "v0.1", f"{net}.pth")


def clip_preprocess(images: Tensor, size: int = 224) -> Tensor:
    """CLIP ViT-B/32 preprocessing (resize shorter side, center crop, CLIP mean/std), as the
    D-SDS A-LPIPS notebook feeds frames to LPIPS."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    resized = F.interpolate(images, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                            mode="bicubic", align_corners=False)
    top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
    crop = resized[..., top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (crop - mean) / std


def a_lpips(frames: Tensor, lpips: nn.Module, batch_size: int = 16, preprocess: str = "none") -> Tuple[float, Tensor]:
    """Mean LPIPS between adjacent frames [N, 3, H, W] in [0, 1] of an orbit, and the N-1 values.

    preprocess "none": LPIPS on the frames (mapped to [-1, 1]); "dsds-notebook": the frames go
    through CLIP ViT-B/32 preprocessing (224 center crop, CLIP mean/std) and the normalised
    tensors are fed to LPIPS, as the D-SDS A-LPIPS notebook does (per the team's notes; its
    reported means: baseline 0.2054, score clipping 0.1963, + prompt debiasing 0.1940)."""
    if frames.shape[0] < 2:
        raise ValueError("A-LPIPS needs at least two frames")
    min_size = _NETS.get(getattr(lpips, "net", ""), {}).get("min_size", 0)
    if preprocess == "none" and min(frames.shape[-2:]) < min_size:
        raise ConfigError("preprocess", preprocess, f"{tuple(frames.shape[-2:])} renders are too small for "
                          f"LPIPS-{lpips.net} (needs >= {min_size} px); use 'dsds-notebook' (224 crops) "
                          "or render larger (data.eval_height / eval_width)")
    values = []
    for start in range(0, frames.shape[0] - 1, batch_size):
        a = frames[start:start + batch_size]
        b = frames[start + 1:start + 1 + batch_size]
        a = a[: b.shape[0]]
        if preprocess == "dsds-notebook":
            values.append(lpips(clip_preprocess(a), clip_preprocess(b), scaled=True))
        elif preprocess == "none":
            values.append(lpips(a, b))
        else:
            raise ConfigError("preprocess", preprocess, "unknown preprocessing", ["none", "dsds-notebook"])
    values = torch.cat(values)
    return float(values.mean()), values


def load_orbit(folder: str, panel_width: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Frames of a threestudio test folder (``it<step>-test/<index>.png``) in index order,
    cropped to the first panel (threestudio saves RGB | normal | opacity side by side; the
    panel is square unless panel_width is given), and their azimuths linspace(0, 360, N)."""
    files = [f for f in os.listdir(folder) if re.fullmatch(r"\d+\.png", f)]
    if len(files) < 2:
        raise ConfigError("folder", folder, "needs at least two numbered renders (<index>.png)")
    files.sort(key=lambda f: int(f[:-4]))
    frames = []
    for name in files:
        image = Image.open(os.path.join(folder, name)).convert("RGB")
        width = panel_width or image.height
        array = torch.frombuffer(bytearray(image.crop((0, 0, width, image.height)).tobytes()), dtype=torch.uint8)
        frames.append(array.view(image.height, width, 3).permute(2, 0, 1).float() / 255.0)
    return torch.stack(frames), torch.linspace(0.0, 360.0, len(files))


def view_of_azimuth(azimuth: Tensor, front_half_width: float = 45.0, back_half_width: float = 45.0) -> List[str]:
    """Region names (front/side/back) of test-orbit azimuths, for shading plots and checks."""
    a = ((azimuth + 180.0) % 360.0 - 180.0).abs()
    return ["front" if x < front_half_width else "back" if x > 180.0 - back_half_width else "side" for x in a.tolist()]


OPEN_CLIP_PREFIX = "open_clip:"


class CLIPScorer:
    """Cosine similarities between images and texts with a transformers CLIP model (hub id or
    local folder, default openai/clip-vit-base-patch32)."""

    def __init__(self, name_or_path: str = "openai/clip-vit-base-patch32", device="cpu", key: str = "clip_model"):
        from transformers import CLIPModel, CLIPProcessor  # heavy (seconds): only when a scorer is built

        check_model_path(key, name_or_path)
        what = "CLIP model (transformers CLIPModel + CLIPProcessor)"
        self.processor = load_pretrained(key, name_or_path, what, lambda: CLIPProcessor.from_pretrained(name_or_path))
        model = load_pretrained(key, name_or_path, what, lambda: CLIPModel.from_pretrained(name_or_path))
        self.model = model.to(device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def similarity(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """[N images, T texts] cosine similarities; images in [0, 1]."""
        inputs = self.processor(text=list(texts), images=[to_pil(i) for i in images], return_tensors="pt",
                                padding=True).to(self.device)
        image = self.model.get_image_features(pixel_values=inputs.pixel_values)
        text = self.model.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        image = getattr(image, "pooler_output", image)  # transformers 5 may return an output object
        text = getattr(text, "pooler_output", text)
        return F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T


class OpenCLIPScorer:
    """The same similarities with an open_clip model: ``arch`` is an open_clip model name
    (``ViT-H-14``, ``ViT-bigG-14``, or ``hf-hub:<org>/<name>``) and ``pretrained`` an open_clip
    pretrained tag (``laion2b_s32b_b79k``) or a local checkpoint file, loaded by
    ``open_clip.create_model_and_transforms`` with the model's own image preprocessing."""

    def __init__(self, arch: str, pretrained: Optional[str] = None, device="cpu", key: str = "clip_model"):
        try:
            import open_clip  # optional: open_clip_torch, for open_clip:<arch> models only
        except ImportError:
            raise ConfigError(key, f"{OPEN_CLIP_PREFIX}{arch}", "needs the `open_clip_torch` package "
                              "(pip install open_clip_torch)") from None
        if arch not in open_clip.list_models() and not arch.startswith("hf-hub:"):
            raise ConfigError(key, arch, "unknown open_clip model", open_clip.list_models())
        if pretrained and _looks_like_path(pretrained) and not os.path.isfile(os.path.expanduser(pretrained)):
            raise ConfigError(key, pretrained, "open_clip checkpoint file does not exist")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=os.path.expanduser(pretrained) if pretrained else None, device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device = torch.device(device)

    @torch.no_grad()
    def similarity(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """[N images, T texts] cosine similarities; images in [0, 1]."""
        pixels = torch.stack([self.preprocess(to_pil(i)) for i in images]).to(self.device)
        image = self.model.encode_image(pixels)
        text = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T


def _looks_like_path(value: str) -> bool:
    """An open_clip checkpoint file rather than a pretrained tag (tags have no '/' or suffix)."""
    return looks_local(value) or os.sep in value or value.endswith((".bin", ".pt", ".pth", ".safetensors"))


def load_clip_scorer(spec: str = "openai/clip-vit-base-patch32", device="cpu", key: str = "clip_model"):
    """A CLIP scorer from one string: a transformers hub id or folder, or
    ``open_clip:<arch>[@<pretrained tag or checkpoint file>]``."""
    if spec.startswith(OPEN_CLIP_PREFIX):
        arch, _, pretrained = spec[len(OPEN_CLIP_PREFIX):].partition("@")
        if not arch:
            raise ConfigError(key, spec, "names no open_clip model; e.g. 'open_clip:ViT-H-14@laion2b_s32b_b79k'")
        return OpenCLIPScorer(arch, pretrained or None, device=device, key=key)
    return CLIPScorer(spec, device=device, key=key)


def view_prompts(prompt: str, phrases: Dict[str, str]) -> Dict[str, str]:
    return {view: f"{prompt}, {phrase}" for view, phrase in phrases.items()}


class ViewClassifier(Protocol):
    """What the per-azimuth view table (metrics) and the 2D view experiment ask of a view
    classifier. CLIP zero-shot (``PhraseViewClassifier``) is the default; any object with this
    shape (e.g. a classifier trained to tell views apart) can take its place."""

    name: str  # prefix of the metrics it produces: <name>_<view>_in_region, <name>_per_azimuth.csv

    def view_scores(self, images: Tensor, prompt: str, views: Sequence[str]) -> Tensor:
        """[N, len(views)] scores, higher when the image shows that view of the prompt's object;
        images [N, 3, H, W] in [0, 1]."""
        ...


class PhraseViewClassifier:
    """CLIP zero-shot view scores: the similarity of each image to each view's phrase, appended to
    the prompt (``"<prompt>, front view"``, the per-azimuth table, D-SDS Fig. 5) or alone
    (``"front view"``, the 2D experiment's classification)."""

    def __init__(self, scorer, phrases: Mapping[str, str], with_prompt: bool = True, name: str = "clip"):
        self.scorer, self.phrases, self.with_prompt, self.name = scorer, dict(phrases), with_prompt, name

    def view_scores(self, images: Tensor, prompt: str, views: Sequence[str]) -> Tensor:
        texts = [f"{prompt}, {self.phrases[v]}" if self.with_prompt else self.phrases[v] for v in views]
        return self.scorer.similarity(images, texts)


def per_azimuth_views(classifier: ViewClassifier, frames: Tensor, azimuths: Tensor, prompt: str,
                      views: Sequence[str]) -> List[Dict[str, float]]:
    """One row per azimuth: the classifier's score of that render for each view."""
    scores = classifier.view_scores(frames, prompt, list(views))
    return [{"azimuth": float(a), **{view: float(s) for view, s in zip(views, row)}}
            for a, row in zip(azimuths, scores)]


def per_azimuth_clip(scorer, frames: Tensor, azimuths: Tensor, prompt: str,
                     phrases: Dict[str, str]) -> List[Dict[str, float]]:
    """One row per azimuth: the CLIP similarity of that render to each view-augmented prompt."""
    return per_azimuth_views(PhraseViewClassifier(scorer, phrases), frames, azimuths, prompt, list(phrases))


def r_precision(scorer, frames: Tensor, prompt: str, distractors: Sequence[str]) -> float:
    """Fraction of renders whose most similar text, among the prompt and the distractors, is the
    prompt (CLIP R-precision with R = 1)."""
    if not distractors:
        raise ConfigError("distractors", list(distractors), "R-precision needs distractor prompts")
    sims = scorer.similarity(frames, [prompt] + list(distractors))
    return float((sims.argmax(dim=1) == 0).float().mean())
