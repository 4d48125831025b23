"""LoRA on a diffusers UNet (backbones/lora.py): one UNet for both VSD branches. At the start the
LoRA UNet equals the base one; after a step on the LoRA parameters only it differs while the base
weights and the disabled UNet stay bit-identical; the camera embedding is threestudio's; the state
dict round-trips under threestudio's key names; the parameter count is rank x (in + out) over the
four projections of every attention module."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from antijanus.backbones.lora import (
    LORA_TARGETS,
    add_lora,
    attention_modules,
    camera_embedding,
    load_lora_state_dict,
    lora_branch,
    lora_state_dict,
    parameter_count,
    remove_lora,
    shares_unet,
    time_embedding_dim,
    trainable_parameters,
)
from antijanus.testing.tiny_models import _sd_unet_kwargs


def tiny_unet(seed=0, time_embedding_dim=1280):
    """The tiny SD UNet with SD's 1280-wide time embedding, so threestudio's TimestepEmbedding(16,
    1280) fits as its class embedding; frozen, as the backbone leaves it."""
    torch.manual_seed(seed)
    kwargs = dict(_sd_unet_kwargs("tiny"), time_embedding_dim=time_embedding_dim)
    return UNet2DConditionModel(**kwargs).eval().requires_grad_(False)


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([50, 700]),
            torch.randn(2, 8, 32, generator=g), torch.randn(2, 16, generator=g))


@torch.no_grad()
def base_output(unet, x, t, text):
    return unet(x, t, encoder_hidden_states=text).sample


def lora_output(unet, lora, camera_module, x, t, text, camera):
    with lora_branch(unet, lora, camera_module):
        kwargs = {} if camera_module is None else {"class_labels": camera}
        return unet(x, t, encoder_hidden_states=text, **kwargs).sample


def train_one_step(unet, lora, camera_module, lr=1.0):
    """One SGD step of the LoRA's denoising loss on the LoRA (and camera) parameters only."""
    x, t, text, camera = inputs(seed=2)
    optimizer = torch.optim.SGD(trainable_parameters(lora, camera_module), lr=lr)
    loss = (lora_output(unet, lora, camera_module, x, t, text, camera) - torch.randn_like(x)).pow(2).mean()
    loss.backward()
    optimizer.step()


def test_the_lora_unet_equals_the_base_unet_at_init():
    unet = tiny_unet()
    x, t, text, camera = inputs()
    before = base_output(unet, x, t, text)
    lora = add_lora(unet)
    with torch.no_grad():
        assert torch.equal(lora_output(unet, lora, None, x, t, text, camera), before)  # up = 0
        zero_camera = camera_embedding(zero_init=True)
        assert torch.equal(lora_output(unet, lora, zero_camera, x, t, text, camera), before)
        # threestudio's camera embedding (default init) already moves the LoRA branch at step 0
        assert not torch.allclose(lora_output(unet, lora, camera_embedding(), x, t, text, camera), before)
    assert all(torch.count_nonzero(layer[f"{target}_lora"].up.weight) == 0
               for layer in lora.layers for target in LORA_TARGETS)


def test_a_step_on_the_lora_changes_the_lora_branch_only():
    unet = tiny_unet()
    x, t, text, camera = inputs()
    before = base_output(unet, x, t, text)
    base_weights = {k: v.clone() for k, v in unet.state_dict().items()}
    lora, camera_module = add_lora(unet), camera_embedding()
    with torch.no_grad():
        lora_before = lora_output(unet, lora, camera_module, x, t, text, camera)
    train_one_step(unet, lora, camera_module)
    with torch.no_grad():
        lora_after = lora_output(unet, lora, camera_module, x, t, text, camera)
    assert (lora_after - lora_before).abs().max() > 1e-4
    assert all(p.grad is None for p in unet.parameters())
    state = unet.state_dict()
    assert state.keys() == base_weights.keys()  # the UNet's own keys are untouched
    assert all(torch.equal(state[k], v) for k, v in base_weights.items())
    assert torch.equal(base_output(unet, x, t, text), before)  # disabled: the base UNet, bit for bit
    assert unet.class_embedding is None and not lora.enabled


def test_the_branch_is_restored_on_error_and_remove_lora_detaches_it():
    unet = tiny_unet()
    x, t, text, camera = inputs()
    before = base_output(unet, x, t, text)
    lora, camera_module = add_lora(unet), camera_embedding()
    train_one_step(unet, lora, camera_module)
    with pytest.raises(RuntimeError):
        with lora_branch(unet, lora, camera_module):
            raise RuntimeError("mid-step failure")
    assert unet.class_embedding is None and not lora.enabled
    lora.enabled = True
    assert not torch.equal(base_output(unet, x, t, text), before)  # enabled, the deltas act
    remove_lora(lora)
    assert torch.equal(base_output(unet, x, t, text), before)


def test_a_half_precision_unet_with_fp32_deltas_as_threestudio():
    unet = tiny_unet().to(torch.bfloat16)
    x, t, text, camera = inputs()
    x, text = x.bfloat16(), text.bfloat16()
    before = base_output(unet, x, t, text)
    lora, camera_module = add_lora(unet), camera_embedding(output_dtype=torch.bfloat16, zero_init=True)
    assert all(p.dtype == torch.float32 for p in trainable_parameters(lora, camera_module))
    out = lora_output(unet, lora, camera_module, x, t, text, camera)
    assert out.dtype == torch.bfloat16 and torch.equal(out.detach(), before)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lora.parameters())


def test_hooks_keep_the_attention_processors():
    unet = tiny_unet()
    kinds = {name: type(p) for name, p in unet.attn_processors.items()}
    add_lora(unet)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == kinds


def test_state_dict_round_trip_under_threestudios_key_names():
    unet = tiny_unet()
    x, t, text, camera = inputs()
    lora, camera_module = add_lora(unet), camera_embedding()
    train_one_step(unet, lora, camera_module)
    state = lora_state_dict(lora, camera_module)
    assert "lora_layers.layers.0.to_q_lora.down.weight" in state
    assert "lora_layers.layers.7.to_out_lora.up.weight" in state
    assert "camera_embedding.module.linear_1.weight" in state
    with torch.no_grad():
        expected = lora_output(unet, lora, camera_module, x, t, text, camera)

    fresh = tiny_unet()  # the same base weights, a new (differently initialised) LoRA
    torch.manual_seed(123)
    fresh_lora, fresh_camera = add_lora(fresh), camera_embedding()
    with torch.no_grad():
        assert not torch.allclose(lora_output(fresh, fresh_lora, fresh_camera, x, t, text, camera), expected)
        load_lora_state_dict(state, fresh_lora, fresh_camera)
        assert torch.equal(lora_output(fresh, fresh_lora, fresh_camera, x, t, text, camera), expected)
    with pytest.raises(KeyError, match="unexpected"):
        load_lora_state_dict({"unet.conv_in.weight": torch.zeros(1)}, fresh_lora, fresh_camera)
    with pytest.raises(RuntimeError, match="Missing"):
        partial = {k: v for k, v in state.items() if "layers.0." not in k}
        load_lora_state_dict(partial, fresh_lora, fresh_camera)


def test_parameter_count_is_rank_times_in_plus_out_per_projection():
    unet = tiny_unet()
    lora, camera_module = add_lora(unet), camera_embedding()  # threestudio's rank 4 by default
    ranks = {layer[f"{target}_lora"].down.out_features for layer in lora.layers for target in LORA_TARGETS}
    assert ranks == {4}
    assert len(lora.layers) == len(attention_modules(unet)) == len(unet.attn_processors) == 8
    # tiny UNet: six attention modules at width 32 (text width 32), two in the mid block at 64:
    # self-attention 4 x (64 -> 64), cross-attention to_k/to_v read the 32-wide text.
    width_32 = 6 * 4 * 4 * (32 + 32)
    mid_self = 4 * 4 * (64 + 64)
    mid_cross = 2 * 4 * (64 + 64) + 2 * 4 * (32 + 64)
    expected_lora = width_32 + mid_self + mid_cross
    assert parameter_count(lora) == expected_lora == 9984
    camera = 16 * 1280 + 1280 + 1280 * 1280 + 1280  # TimestepEmbedding(16, 1280)
    assert parameter_count(lora, camera_module) == expected_lora + camera
    assert parameter_count(add_lora(tiny_unet(), rank=8)) == 2 * expected_lora
    trainable = trainable_parameters(lora, camera_module)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in trainable)


def test_camera_embedding_sizes_and_dtype():
    unet = tiny_unet(time_embedding_dim=None)  # the tiny default: 4 x 32 = 128
    assert time_embedding_dim(unet) == 128
    module = camera_embedding(time_embedding_dim(unet), output_dtype=torch.float16)
    out = module(torch.randn(3, 16, dtype=torch.float64))
    assert out.shape == (3, 128) and out.dtype == torch.float16
    assert module.module.linear_1.weight.dtype == torch.float32


def test_one_unet_is_shared_only_when_the_lora_model_is_the_pretrained_one():
    assert shares_unet("stabilityai/stable-diffusion-2-1-base", None)
    assert shares_unet("stabilityai/stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2-1-base")
    # threestudio's stock ProlificDreamer configs: two different models, two UNets
    assert not shares_unet("stabilityai/stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2-1")


def threestudio_lora_unet(unet):
    """threestudio's VSD LoRA setup (stable_diffusion_vsd_guidance.py lines 152-187) on ``unet``:
    LoRAAttnProcessor per attention module, the camera embedding as class embedding, and
    AttnProcsLayers with its key-renaming hooks cleared. Needs diffusers' real LoRAAttnProcessor
    (0.19.x, threestudio's pin; later versions keep only an empty stub)."""
    from diffusers.loaders import AttnProcsLayers
    from diffusers.models.attention_processor import LoRAAttnProcessor
    from diffusers.models.embeddings import TimestepEmbedding

    unet.class_embedding = camera = TimestepEmbedding(16, 1280)
    channels = unet.config.block_out_channels
    processors = {}
    for name in unet.attn_processors.keys():
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        processors[name] = LoRAAttnProcessor(hidden_size=hidden, cross_attention_dim=cross)
    unet.set_attn_processor(processors)
    layers = AttnProcsLayers(unet.attn_processors)
    layers._load_state_dict_pre_hooks.clear()
    layers._state_dict_hooks.clear()
    return layers, camera


def test_equal_to_threestudios_lora_attention_processors():
    import inspect

    from diffusers.models.attention_processor import LoRAAttnProcessor
    if "hidden_size" not in inspect.signature(LoRAAttnProcessor).parameters:
        pytest.skip("this diffusers has no working LoRAAttnProcessor (threestudio's pin 0.19.x has)")
    theirs, ours = tiny_unet(), tiny_unet()
    layers, camera_ts = threestudio_lora_unet(theirs)
    for p in layers.parameters():  # non-zero deltas, so that they matter
        p.data.normal_(0.0, 0.1)
    lora, camera_module = add_lora(ours), camera_embedding()
    state = {f"lora_layers.{k}": v for k, v in layers.state_dict().items()}
    state.update({f"camera_embedding.module.{k}": v for k, v in camera_ts.state_dict().items()})
    assert state.keys() == lora_state_dict(lora, camera_module).keys()
    load_lora_state_dict(state, lora, camera_module)
    x, t, text, camera = inputs()
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=text, class_labels=camera,
                          cross_attention_kwargs={"scale": 1.0}).sample
        assert torch.allclose(lora_output(ours, lora, camera_module, x, t, text, camera), expected, atol=1e-5)
        theirs.class_embedding = None  # threestudio's pretrained call on a shared UNet
        expected = theirs(x, t, encoder_hidden_states=text, cross_attention_kwargs={"scale": 0.0}).sample
        assert torch.allclose(base_output(ours, x, t, text), expected, atol=1e-5)
