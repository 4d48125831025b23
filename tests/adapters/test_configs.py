"""Every shipped config loads through OmegaConf, names only registered module types, and its
antijanus module blocks pass the modules' own config checks (no model is loaded)."""

import glob
import os

import pytest
from omegaconf import OmegaConf

import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules)
from antijanus.core.guidance_config import (DSDSConfig, ScoreDistillationConfig, VSDConfig, check_vsd_keys,
                                            resolve_config)
from antijanus.adapters import core_config
from helpers import REPO  # noqa: E402

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))

# Module names registered by threestudio itself at commit 28d9d80 (`git grep register(`).
THREESTUDIO_MODULES = set("""
co3d-datamodule control4d-multiview-system custom-mesh deep-floyd-guidance
deep-floyd-prompt-processor diffuse-with-point-light-material dreamfusion-system dummy-exporter
dummy-prompt-processor eff-random-camera-datamodule efficient-dreamfusion-system fantasia3d-system
gan-volume-renderer hybrid-rgb-latent-material image-condition-dreamfusion-system implicit-sdf
implicit-volume instructnerf2nerf-system latentnerf-system magic123-system magic3d-system
mesh-exporter multiview-camera-datamodule nerf-volume-renderer neural-environment-map-background
neural-radiance-material neus-volume-renderer no-material nvdiff-rasterizer patch-renderer
pbr-material perceptual-loss prolificdreamer-system random-camera-datamodule
sd-latent-adapter-material sdi-system single-image-datamodule sjc-system solid-color-background
stable-diffusion-controlnet-guidance stable-diffusion-guidance
stable-diffusion-instructpix2pix-guidance stable-diffusion-prompt-processor
stable-diffusion-sdi-guidance stable-diffusion-unified-guidance stable-diffusion-vsd-guidance
stable-zero123-guidance tetrahedra-sdf-grid textmesh-system textured-background volume-grid
zero123-guidance zero123-simple-system zero123-unified-guidance
""".split())

# threestudio 28d9d80 PromptProcessor.Config keys.
PROMPT_PROCESSOR_KEYS = set("""
prompt prompt_front prompt_side prompt_back prompt_overhead negative_prompt
pretrained_model_name_or_path overhead_threshold front_threshold back_threshold
view_dependent_prompt_front use_cache spawn use_perp_neg perp_neg_f_sb perp_neg_f_fsb
perp_neg_f_fs perp_neg_f_sf use_prompt_debiasing pretrained_model_name_or_path_prompt_debiasing
prompt_debiasing_mask_ids
""".split())

CORE_CONFIGS = {"perp-neg-sds-guidance": ScoreDistillationConfig, "dsds-guidance": DSDSConfig,
                "perp-neg-vsd-guidance": VSDConfig}
STOCK_PROMPT_PROCESSORS = {"stable-diffusion-prompt-processor", "deep-floyd-prompt-processor"}


def module_types(cfg):
    """(key path, type name, block path) for every `<x>_type` entry that has an `<x>` block beside it
    (threestudio's module convention; `normal_type: analytic` and the like are not modules)."""
    found = []

    def walk(node, path):
        for key, value in node.items():
            block = node.get(key[: -len("_type")]) if key.endswith("_type") else None
            if isinstance(value, str) and isinstance(block, dict):
                found.append((path + key, value, path + key[: -len("_type")]))
            elif isinstance(value, dict):
                walk(value, path + key + ".")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return found


def test_configs_exist():
    assert CONFIGS, "configs/ ships no YAML config"


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_names_registered_modules_with_valid_keys(path):
    cfg = OmegaConf.load(path)
    types = module_types(cfg)
    assert any(name in CORE_CONFIGS for _, name, _ in types), "config uses no antijanus module"
    for key, name, block_path in types:
        assert name in THREESTUDIO_MODULES or name in threestudio.__modules__, f"{key}: {name}"
        # interpolations such as ${trainer.max_steps} resolve against the whole config
        block = OmegaConf.to_container(OmegaConf.select(cfg, block_path), resolve=True) \
            if name in CORE_CONFIGS else OmegaConf.to_container(OmegaConf.select(cfg, block_path))
        if name in CORE_CONFIGS:
            assert name in threestudio.__modules__
            module_cls = threestudio.find(name)
            parsed = OmegaConf.structured(module_cls.Config(**block))  # threestudio's parse_structured
            config = core_config(CORE_CONFIGS[name], parsed)
            resolve_config(config)
            if name == "perp-neg-vsd-guidance":
                check_vsd_keys(config, "stable-diffusion")  # VSD's own keys (at configuration)
        if name in ("bert-pmi-prompt-processor", "bert-pmi-deep-floyd-prompt-processor", "dnp-prompt-processor"):
            OmegaConf.structured(threestudio.find(name).Config(**block))  # every key is valid
        if name in STOCK_PROMPT_PROCESSORS:
            assert set(block) <= PROMPT_PROCESSOR_KEYS, set(block) - PROMPT_PROCESSOR_KEYS


# threestudio 28d9d80 `stable-diffusion-guidance` / `deep-floyd-guidance` Config keys.
STOCK_GUIDANCE_KEYS = set("""
pretrained_model_name_or_path enable_memory_efficient_attention enable_sequential_cpu_offload
enable_attention_slicing enable_channels_last_format guidance_scale grad_clip
half_precision_weights min_step_percent max_step_percent sqrt_anneal trainer_max_steps
use_img_loss use_sjc var_red weighting_strategy token_merging token_merging_params
view_dependent_prompting max_items_eval
""".split())


def test_stock_guidance_configs_port_by_changing_the_type_name():
    from dataclasses import fields

    ours = {f.name for f in fields(ScoreDistillationConfig)}
    assert STOCK_GUIDANCE_KEYS <= ours, STOCK_GUIDANCE_KEYS - ours
    # threestudio's dreamfusion-sd.yaml / magic3d guidance blocks, unchanged
    block = {"pretrained_model_name_or_path": "stabilityai/stable-diffusion-2-1-base",
             "guidance_scale": 100.0, "weighting_strategy": "sds", "min_step_percent": 0.02,
             "max_step_percent": [0, 0.98, 0.5, 5000], "grad_clip": [0, 2.0, 8.0, 1000]}
    for name in CORE_CONFIGS:
        parsed = OmegaConf.structured(threestudio.find(name).Config(**block))
        resolve_config(core_config(CORE_CONFIGS[name], parsed))
