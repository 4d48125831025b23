"""LoRA on a diffusers UNet's attention layers and the camera embedding, for VSD / ESD
(``core/vsd.py``), in plain PyTorch: the same with diffusers 0.19.3 (threestudio's pin) and 0.42.

What threestudio's ``stable-diffusion-vsd-guidance`` builds (HEAD 28d9d80, lines 152-187):

- a ``LoRAAttnProcessor`` (rank 4) on every attention module of the LoRA UNet: low-rank deltas
  up(down(h)) added to its four projections to_q, to_k, to_v and to_out[0]; ``down`` initialised
  N(0, 1/rank), ``up`` zeros, so at the start the deltas are exactly 0; kept in fp32;
- a camera embedding ``TimestepEmbedding(16, 1280)`` (hard-coded, its "FIXME"), installed as
  ``unet_lora.class_embedding``: the UNet adds it to its time embedding.

How it is done here, and why. The deltas are added by forward hooks on the four ``nn.Linear``
projections, not by an attention processor: diffusers' ``LoRAAttnProcessor`` is gone from recent
versions and the processor call signature changed between 0.19 and 0.42, while a hook on a Linear
works with both and keeps whatever processor the backbone set (SDPA, sliced attention;
threestudio's LoRA processor replaced it with the plain one). The UNet's modules and state-dict
keys are untouched; the LoRA weights live in one separate module (``AttentionLoRA``) whose keys
are those of threestudio's ``lora_layers`` ("layers.<i>.to_q_lora.down.weight", i in
``unet.attn_processors`` order), as the camera embedding's are those of its ``camera_embedding``
("module.linear_1.weight"), so a threestudio ProlificDreamer checkpoint's guidance weights load.

One UNet for both branches. The hooks add nothing unless the LoRA is enabled, and the camera
embedding is the UNet's class embedding only inside ``lora_branch``: outside it the UNet is the
pretrained one, bit for bit. Cost against threestudio: threestudio shares its UNet only when
``pretrained_model_name_or_path_lora`` equals ``pretrained_model_name_or_path`` (then it passes
``cross_attention_kwargs={"scale": 0.0}`` and takes the class embedding off for the pretrained
call, lines 98-103 and 480-488); otherwise it loads a second full pipeline (its VAE then shared,
its text encoder deleted, lines 104-112 and 140-143), and its stock ProlificDreamer configs name
two models (SD 2.1-base and SD 2.1): two UNets, 2 x 866M parameters (about 3.5 GB in fp16). The same sharing
rule applies here (``shares_unet``), so the memory is the same in both cases; what differs: the
disabled pretrained pass runs no LoRA matmuls at all (threestudio computes them and multiplies by
0), and no diffusers LoRA API is needed. The LoRA itself is small: rank 4 on SD 2.1's 32 attention
modules is 829,952 parameters, the camera embedding 1,661,440.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

#: The attention projections threestudio's LoRAAttnProcessor adapts (to_out means to_out[0]).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out")
#: threestudio's LoRA rank (diffusers' LoRAAttnProcessor default).
DEFAULT_RANK = 4
#: threestudio's camera embedding: a flattened 4x4 matrix -> the SD UNet's time embedding size.
CAMERA_DIM = 16
SD_TIME_EMBED_DIM = 1280


class LowRankDelta(nn.Module):
    """up(down(h)): diffusers' ``LoRALinearLayer`` without network_alpha, as threestudio uses it.
    Computed in the delta's own dtype (fp32), returned in the input's."""

    def __init__(self, in_features: int, out_features: int, rank: int = DEFAULT_RANK,
                 dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.up = nn.Linear(rank, out_features, bias=False, dtype=dtype, device=device)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)  # the delta starts at exactly 0

    def forward(self, hidden: Tensor) -> Tensor:
        return self.up(self.down(hidden.to(self.down.weight.dtype))).to(hidden.dtype)


class AttentionLoRA(nn.Module):
    """The LoRA deltas of one UNet: ``layers[i]["to_q_lora" | ... | "to_out_lora"]`` for its i-th
    attention module. ``enabled`` switches every delta on or off (off: the UNet is the base one)."""

    def __init__(self, layers: List[nn.ModuleDict]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.enabled = False
        self._handles: List[torch.utils.hooks.RemovableHandle] = []

    def delta_hook(self, delta: LowRankDelta):
        """A forward hook for a projection: output + delta(input) while enabled."""
        def add_delta(module: nn.Module, args: Tuple, output: Tensor) -> Optional[Tensor]:
            return output + delta(args[0]) if self.enabled else None
        return add_delta


def is_attention(module: nn.Module) -> bool:
    """A diffusers attention module (what ``unet.attn_processors`` lists): a processor setter and
    the four Linear projections (0.19.3's LoRACompatibleLinear is a Linear too)."""
    if not hasattr(module, "set_processor"):
        return False
    projections = [getattr(module, name, None) for name in ("to_q", "to_k", "to_v")]
    to_out = getattr(module, "to_out", None)
    projections.append(to_out[0] if isinstance(to_out, nn.ModuleList) and len(to_out) else None)
    return all(isinstance(p, nn.Linear) for p in projections)


def attention_modules(unet: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every attention module, in ``unet.attn_processors`` order (both walk the
    children depth-first in registration order)."""
    return [(name, module) for name, module in unet.named_modules() if is_attention(module)]


def projection(attention: nn.Module, target: str) -> nn.Linear:
    """One of LORA_TARGETS of an attention module (to_out: its Linear, to_out[0])."""
    return attention.to_out[0] if target == "to_out" else getattr(attention, target)


def add_lora(unet: nn.Module, rank: int = DEFAULT_RANK, dtype: torch.dtype = torch.float32,
             device: Optional[torch.device] = None) -> AttentionLoRA:
    """Attach rank-``rank`` deltas (fp32 by default, as threestudio's) to every attention module of
    ``unet``, disabled, on ``device`` (default: the UNet's; name the execution device when the UNet
    is offloaded). Returns the module that holds them (train it, save it, switch it with
    ``lora_branch``; ``remove_lora`` detaches it)."""
    device = device if device is not None else next(unet.parameters()).device
    attentions = attention_modules(unet)
    if not attentions:
        raise ValueError("the UNet has no attention module with to_q/to_k/to_v/to_out projections")
    layers = []
    for _, attention in attentions:
        layers.append(nn.ModuleDict({
            f"{target}_lora": LowRankDelta(projection(attention, target).in_features,
                                           projection(attention, target).out_features, rank, dtype, device)
            for target in LORA_TARGETS}))
    lora = AttentionLoRA(layers)
    for (_, attention), layer in zip(attentions, layers):
        for target in LORA_TARGETS:
            hook = lora.delta_hook(layer[f"{target}_lora"])
            lora._handles.append(projection(attention, target).register_forward_hook(hook))
    return lora


def remove_lora(lora: AttentionLoRA) -> None:
    """Detach the deltas from their UNet (it is the base UNet again, whatever ``enabled`` says)."""
    for handle in lora._handles:
        handle.remove()
    lora._handles.clear()


class CameraEmbedding(nn.Module):
    """threestudio's ``ToWeightsDType(TimestepEmbedding(16, 1280), weights_dtype)``: the camera
    [N, 16] -> [N, time_embed_dim] in the UNet's dtype. The input is cast to the embedding's own
    dtype first (threestudio feeds fp32 cameras to its fp32 embedding, so nothing changes there)."""

    def __init__(self, module: nn.Module, output_dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.output_dtype = output_dtype

    def forward(self, camera: Tensor) -> Tensor:
        return self.module(camera.to(self.module.linear_1.weight.dtype)).to(self.output_dtype)


def camera_embedding(time_embed_dim: int = SD_TIME_EMBED_DIM, output_dtype: torch.dtype = torch.float32,
                     device: Optional[torch.device] = None, zero_init: bool = False) -> CameraEmbedding:
    """threestudio's camera embedding: diffusers' ``TimestepEmbedding(16, time_embed_dim)`` (fp32,
    PyTorch's default Linear init; 1280 is every SD 1.x / 2.x UNet's, see ``time_embedding_dim``).
    With the default init the LoRA branch differs from the base UNet from the first step even
    though the LoRA deltas are 0; ``zero_init`` (not threestudio's) zeroes its last layer so that
    the LoRA branch starts exactly at the pretrained model."""
    from diffusers.models.embeddings import TimestepEmbedding  # deferred: slow import

    module = TimestepEmbedding(CAMERA_DIM, time_embed_dim).to(device)
    if zero_init:
        nn.init.zeros_(module.linear_2.weight)
        nn.init.zeros_(module.linear_2.bias)
    return CameraEmbedding(module, output_dtype)


def time_embedding_dim(unet: nn.Module) -> int:
    """The size of a diffusers UNet's time embedding (what a class embedding must output)."""
    return int(unet.time_embedding.linear_2.out_features)


@contextlib.contextmanager
def lora_branch(unet: nn.Module, lora: AttentionLoRA, camera: Optional[nn.Module] = None
                ) -> Iterator[nn.Module]:
    """Within: ``unet`` is the LoRA UNet (deltas on; ``camera`` as its class embedding, so every
    call needs ``class_labels`` [N, 16]). On exit, even on error, it is the base UNet again."""
    previous_enabled, previous_class = lora.enabled, unet.class_embedding
    lora.enabled = True
    if camera is not None:
        unet.class_embedding = camera
    try:
        yield unet
    finally:
        lora.enabled = previous_enabled
        unet.class_embedding = previous_class


def shares_unet(pretrained_model: Optional[str], lora_model: Optional[str]) -> bool:
    """threestudio's rule: one UNet for both branches iff the LoRA model's name equals the
    pretrained one (here a missing LoRA name means the same model)."""
    return lora_model is None or lora_model == pretrained_model


def trainable_parameters(lora: AttentionLoRA, camera: Optional[nn.Module] = None) -> List[nn.Parameter]:
    """What VSD trains besides the 3D model: every LoRA delta, and the camera embedding."""
    return list(lora.parameters()) + (list(camera.parameters()) if camera is not None else [])


def parameter_count(lora: AttentionLoRA, camera: Optional[nn.Module] = None) -> int:
    return sum(p.numel() for p in trainable_parameters(lora, camera))


def lora_state_dict(lora: AttentionLoRA, camera: Optional[nn.Module] = None) -> Dict[str, Tensor]:
    """The trainable weights for a checkpoint (copies): "lora_layers.<key>" and
    "camera_embedding.<key>", the names under which threestudio's VSD guidance registers them."""
    state = {f"lora_layers.{k}": v.detach().clone() for k, v in lora.state_dict().items()}
    if camera is not None:
        state.update({f"camera_embedding.{k}": v.detach().clone() for k, v in camera.state_dict().items()})
    return state


def load_lora_state_dict(state: Dict[str, Tensor], lora: AttentionLoRA,
                         camera: Optional[nn.Module] = None) -> None:
    """Load ``lora_state_dict``'s output (strict: every key present, no key left over)."""
    parts = {"lora_layers.": lora, "camera_embedding.": camera}
    unknown = [k for k in state if not any(k.startswith(p) for p, m in parts.items() if m is not None)]
    if unknown:
        raise KeyError(f"unexpected keys in the LoRA state dict: {unknown[:5]}")
    for prefix, module in parts.items():
        if module is not None:
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
