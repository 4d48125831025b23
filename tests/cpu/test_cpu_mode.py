"""The CPU mode (antijanus.cpu): overrides derived from a config, refusals with a reason, and the
pure-PyTorch nerfacc kernels against straightforward references."""

import textwrap

import pytest
import torch

from antijanus.cpu import CPUUnsupported, cpu_overrides
from antijanus.cpu.nerfacc_kernels import exclusive_prod, exclusive_sum, pack_info
from antijanus.cpu.runner import _insert_overrides


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


NERF = """
    data_type: random-camera-datamodule
    data: {width: 64, height: 64, camera_distance_range: [1.5, 2.0]}
    trainer: {precision: 16-mixed}
    system:
      geometry_type: implicit-volume
      geometry:
        radius: 1.0
        pos_encoding_config: {otype: HashGrid, n_levels: 16}
        mlp_network_config: {otype: FullyFusedMLP, n_neurons: 64}
      background_type: neural-environment-map-background
      background:
        dir_encoding_config: {otype: SphericalHarmonics, degree: 3}
        mlp_network_config: {otype: VanillaMLP, n_neurons: 16}
      renderer_type: nerf-volume-renderer
      # (threestudio's defaults, written out: without threestudio the module fields are unknown)
      renderer: {estimator: occgrid, num_samples_per_ray: 512, near_plane: 0.0, far_plane: 1.0e10}
      guidance_type: stable-diffusion-guidance
      guidance: {half_precision_weights: true}
      prompt_processor_type: stable-diffusion-prompt-processor
      prompt_processor: {spawn: true}
"""


def as_dict(overrides):
    return dict(o.split("=", 1) for o in overrides)


def test_only_what_a_cpu_cannot_run_is_changed(tmp_path):
    overrides, reasons = cpu_overrides(write(tmp_path, NERF))
    got = as_dict(overrides)
    assert got["trainer.precision"] == "32"
    assert got["system.geometry.pos_encoding_config.otype"] == "ProgressiveBandFrequency"
    assert got["system.geometry.mlp_network_config.otype"] == "VanillaMLP"
    assert got["system.background.dir_encoding_config.otype"] == "ProgressiveBandFrequency"
    assert "system.background.mlp_network_config.otype" not in got  # already pure PyTorch
    assert got["system.renderer.estimator"] == "importance"
    # planes enclose the [-1, 1]^3 box from camera distances 1.5 .. 2.0
    assert float(got["system.renderer.near_plane"]) == 0.05
    assert float(got["system.renderer.far_plane"]) == pytest.approx(2.0 + 3 ** 0.5, abs=1e-3)
    assert got["system.guidance.half_precision_weights"] == "false"
    assert got["system.prompt_processor.spawn"] == "false"
    assert "data.width" not in got and "system.renderer.num_samples_per_ray" not in got  # not --small
    assert len(reasons) == len(overrides) and all("=" in r and ": " in r for r in reasons)


def test_small_runs_shrink_what_the_modules_have(tmp_path):
    got = as_dict(cpu_overrides(write(tmp_path, NERF), small=True)[0])
    assert got["data.width"] == got["data.height"] == "32"
    assert got["system.renderer.num_samples_per_ray"] == "16"


def test_user_overrides_are_taken_into_account_and_win(tmp_path):
    path = write(tmp_path, NERF)
    got = as_dict(cpu_overrides(path, ["system.renderer.estimator=importance",
                                       "system.renderer.near_plane=0.2", "trainer.precision=32"])[0])
    assert "system.renderer.estimator" not in got and "trainer.precision" not in got
    assert "system.renderer.near_plane" not in got  # the user's planes are kept
    # ours go before the user's key=value extras, so the user's win in OmegaConf's merge
    args = _insert_overrides(["--config", path, "--train", "a=1"], ["b=2"])
    assert args == ["--config", path, "--train", "b=2", "a=1"]


@pytest.mark.parametrize("extra, reason", [
    ("""
    system:
      renderer_type: nvdiff-rasterizer
    """, "nvdiffrast"),
    ("""
    system:
      renderer_type: patch-renderer
      renderer: {base_renderer_type: nvdiff-rasterizer}
    """, "nvdiffrast"),
    ("""
    system:
      renderer_type: neus-volume-renderer
      renderer: {estimator: occgrid}
    """, "use_volsdf"),
    ("""
    data_type: single-image-datamodule
    """, "cuda:<rank>"),
])
def test_configs_that_need_cuda_are_refused_with_the_reason(tmp_path, extra, reason):
    with pytest.raises(CPUUnsupported, match=reason):
        cpu_overrides(write(tmp_path, extra))


def test_progressive_normal_eps_follows_the_replaced_hash_grid(tmp_path):
    path = write(tmp_path, """
    system:
      geometry_type: implicit-sdf
      geometry:
        finite_difference_normal_eps: progressive
        pos_encoding_config: {otype: ProgressiveBandHashGrid}
    """)
    assert as_dict(cpu_overrides(path)[0])["system.geometry.finite_difference_normal_eps"] == "0.01"


def segments(values, ray):
    return [values[ray == r] for r in range(int(ray.max()) + 1)]


def test_an_override_that_is_not_yaml_names_its_key(tmp_path):
    from antijanus.cpu.overrides import load_merged_config
    from antijanus.utils.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text("system:\n  prompt_processor:\n    dnp_output_dir: null\n")
    with pytest.raises(ConfigError, match=r"system.prompt_processor.dnp_output_dir.*not a YAML value.*quote it"):
        load_merged_config(str(config), ["system.prompt_processor.dnp_output_dir={trial_dir}/dnp"])
    quoted = load_merged_config(str(config), ['system.prompt_processor.dnp_output_dir="{trial_dir}/dnp"'])
    assert quoted.system.prompt_processor.dnp_output_dir == "{trial_dir}/dnp"


def test_packed_kernels_match_per_ray_references():
    torch.manual_seed(0)
    ray = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 4, 4])  # ray 3 has no sample
    x = torch.rand(len(ray), dtype=torch.float64, requires_grad=True)
    packed = pack_info(ray, n_rays=5)
    assert packed.tolist() == [[0, 3], [3, 1], [4, 4], [8, 0], [8, 2]]
    ref_sum = torch.cat([torch.cumsum(s, 0) - s for s in segments(x, ray) if len(s)])
    ref_prod = torch.cat([torch.cat([s.new_ones(1), torch.cumprod(s, 0)[:-1]]) for s in segments(x, ray) if len(s)])
    assert torch.allclose(exclusive_sum(x, packed), ref_sum)
    out = exclusive_prod(x, packed)
    assert torch.allclose(out, ref_prod)
    grad, = torch.autograd.grad(out.sum(), x)
    ref_grad, = torch.autograd.grad(ref_prod.sum(), x)
    assert torch.allclose(grad, ref_grad)
    # a ray whose alpha is exactly 1 blocks everything behind it, without NaN
    y = torch.tensor([0.5, 0.0, 0.7])
    assert exclusive_prod(y, pack_info(torch.zeros(3, dtype=torch.long))).tolist() == [1.0, 0.5, 0.0]
