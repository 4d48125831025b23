"""Drop-in: every stock threestudio config that uses `stable-diffusion-guidance` or
`deep-floyd-guidance`, with only the guidance type name changed to ours (everything else stock,
threestudio's own prompt processors included), runs through threestudio's own launch.py on a CPU
(the CPU mode, tiny models): 2 steps, one validation and the --test pass.

The list below is the README's table; configs that cannot run on a CPU name the reason, and the
CPU mode refuses them with that reason before anything loads. Of the stock VSD configs
(`stable-diffusion-vsd-guidance` -> `perp-neg-vsd-guidance`) the table holds
prolificdreamer-texture (prolificdreamer.yaml itself runs in test_vsd_launch.py).
Runs only in the threestudio tier (marker `threestudio`).
"""

import csv
import math
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO  # noqa: E402
from fakes import launcher_env, threestudio_root  # noqa: E402

pytestmark = pytest.mark.threestudio

ROOT = REPO
RUNNER = os.path.join(ROOT, "scripts", "threestudio_cpu.py")

#: stock config -> None (runs on a CPU) or why it cannot run here
STOCK = {
    "dreamfusion-sd.yaml": None,
    "dreamfusion-sd-eff.yaml": None,
    "dreamfusion-if.yaml": None,
    "hifa.yaml": None,
    "latentnerf.yaml": None,
    "latentnerf-refine.yaml": None,
    "sketchshape.yaml": None,
    "sketchshape-refine.yaml": None,
    "sjc.yaml": None,
    "magic3d-coarse-sd.yaml": None,
    "magic3d-coarse-if.yaml": None,
    "textmesh-if.yaml": "GPU only: NeuS renderer with nerfacc's occupancy grid (CUDA); its importance "
                        "sampling needs use_volsdf (experimental/textmesh-if-importance runs)",
    "experimental/textmesh-if-importance.yaml": None,
    "gradio/dreamfusion-sd.yaml": None,
    "gradio/dreamfusion-if.yaml": None,
    "gradio/latentnerf.yaml": None,
    "gradio/sjc.yaml": None,
    "gradio/textmesh-if.yaml": "GPU only: as textmesh-if",
    "magic3d-refine-sd.yaml": "GPU only: mesh refinement rasterises with nvdiffrast",
    "prolificdreamer-geometry.yaml": "GPU only: mesh stage (tetrahedra-sdf-grid) rasterises with nvdiffrast",
    "prolificdreamer-texture.yaml": "GPU only: mesh stage (tetrahedra-sdf-grid) rasterises with nvdiffrast",
    "fantasia3d.yaml": "GPU only: rasterises with nvdiffrast",
    "fantasia3d-texture.yaml": "GPU only: rasterises with nvdiffrast",
    "gradio/fantasia3d.yaml": "GPU only: rasterises with nvdiffrast",
    "experimental/imagecondition_zero123nerf_refine.yaml": "GPU only: rasterises with nvdiffrast",
    "experimental/imagecondition.yaml": "GPU only: single-image-datamodule puts its tensors on cuda:<rank>",
    "experimental/imagecondition_zero123nerf.yaml": "GPU only: single-image-datamodule puts its tensors on cuda:<rank>",
    "experimental/co3d-imagecondition.yaml": "needs the CO3D data set (not available here)",
}
#: the stock VSD configs in STOCK (the rest of STOCK are the SD / IF ones, every one of them)
VSD_STOCK = {"prolificdreamer-texture.yaml"}
OURS = {"stable-diffusion-guidance": "perp-neg-sds-guidance", "deep-floyd-guidance": "dsds-guidance",
        "stable-diffusion-vsd-guidance": "perp-neg-vsd-guidance"}
#: a reason of the table -> what the CPU mode says (cpu/overrides.py)
CPU_MODE_SAYS = {
    "nvdiffrast": "system.renderer_type=nvdiff-rasterizer rasterises meshes with nvdiffrast (CUDA/OpenGL)",
    "NeuS renderer": "the NeuS renderer samples by importance only with use_volsdf: true",
    "as textmesh-if": "the NeuS renderer samples by importance only with use_volsdf: true",
    "single-image-datamodule": "data_type=single-image-datamodule puts its tensors on cuda:<rank>",
}
#: second stage -> first stage whose checkpoint it starts from (system.weights)
REFINES = {"latentnerf-refine.yaml": "latentnerf.yaml", "sketchshape-refine.yaml": "sketchshape.yaml"}


def stock_configs(guidances=r"(stable-diffusion|deep-floyd)-guidance"):
    found = set()
    for folder, _, files in os.walk(os.path.join(threestudio_root(), "configs")):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".yaml") and re.search(rf'guidance_type: "?{guidances}"?\s*$', open(path).read(), re.M):
                found.add(os.path.relpath(path, os.path.join(threestudio_root(), "configs")))
    return found


def test_the_table_lists_every_stock_sd_and_if_config_and_stock_vsd_ones():
    assert stock_configs() == set(STOCK) - VSD_STOCK
    assert VSD_STOCK <= stock_configs("stable-diffusion-vsd-guidance")


def port(config: str, folder) -> str:
    """The stock config with only the type names changed."""
    text = open(os.path.join(threestudio_root(), "configs", config)).read()
    for stock, ours in OURS.items():
        text = re.sub(rf'(_type: )"?{stock}"?(\s*$)', rf'\g<1>"{ours}"\2', text, flags=re.M)
    path = folder / config.replace("/", "-")
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_sd, tiny_if):
    work = tmp_path_factory.mktemp("stock")
    os.makedirs(work / "custom")
    os.symlink(os.path.join(ROOT, "custom", "antijanus"), work / "custom" / "antijanus")
    os.symlink(os.path.join(threestudio_root(), "load"), work / "load")
    return work, {"sd": tiny_sd, "if": tiny_if}


def run(workspace, config, extra=()):
    work, models = workspace
    path = port(config, work)
    model = models["if"] if "-if" in config else models["sd"]
    tag = config.replace("/", "-")[:-5]
    args = [sys.executable, RUNNER, "--launch", os.path.join(threestudio_root(), "launch.py"),
            "--config", path, "--train", "--small", f"exp_root_dir={work}/outputs", "name=stock", f"tag={tag}",
            "use_timestamp=false", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "checkpoint.every_n_train_steps=2", "trainer.log_every_n_steps=1",
            "system.prompt_processor.prompt=a corgi",
            f"system.prompt_processor.pretrained_model_name_or_path={model}",
            f"system.guidance.pretrained_model_name_or_path={model}", *extra]
    env = launcher_env(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    result = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return work / "outputs" / "stock" / tag


def extras(config, workspace):
    work, _ = workspace
    out = []
    if "sketchshape" in config:
        out.append("system.guide_shape=load/shapes/teddy.obj")
    if config in REFINES:
        first = work / "outputs" / "stock" / REFINES[config][:-5] / "ckpts" / "last.ckpt"
        if not first.exists():
            run(workspace, REFINES[config], extras(REFINES[config], workspace))
        out.append(f"system.weights={first}")
    return out


@pytest.mark.parametrize("config", sorted(c for c, why in STOCK.items() if why is None))
def test_ported_stock_config_trains_validates_and_tests(workspace, config):
    trial = run(workspace, config, extras(config, workspace))
    rows = list(csv.DictReader(open(trial / "csv_logs" / "version_0" / "metrics.csv")))
    guidance_loss = next(k for k in rows[0] if k in ("train/loss_sds", "train/loss_sjc"))
    losses = [float(r[guidance_loss]) for r in rows if r.get(guidance_loss)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any(name.startswith("it2-0") or name == "it2-0.png" for name in os.listdir(trial / "save")), "validation"
    assert (trial / "save" / "it2-test").is_dir(), "the --test pass after training"


@pytest.mark.parametrize("config", sorted(c for c, why in STOCK.items() if why and why.startswith("GPU only")))
def test_gpu_only_stock_configs_are_refused_with_the_reason(workspace, config):
    """The CPU mode says why before anything loads, instead of failing mid-run."""
    work, _ = workspace
    result = subprocess.run(
        [sys.executable, RUNNER, "--launch", os.path.join(threestudio_root(), "launch.py"),
         "--config", port(config, work), "--train", "system.prompt_processor.prompt=a corgi"],
        cwd=work, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([threestudio_root(), os.environ.get("PYTHONPATH", "")])))
    assert result.returncode != 0
    assert "this config runs on a GPU only" in result.stderr and "Traceback" not in result.stderr
    says = next(text for reason, text in CPU_MODE_SAYS.items() if reason in STOCK[config])
    assert says in result.stderr, result.stderr[-2000:]
    if config in VSD_STOCK:  # the ported VSD config names our guidance
        assert 'guidance_type: "perp-neg-vsd-guidance"' in open(port(config, work)).read()
