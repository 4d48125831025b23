"""The README's user-facing commands, run the way a user types them (threestudio tier): from a
threestudio checkout's root holding this repository as ``custom/antijanus``, as a subprocess with
no PYTHONPATH or other variable set by the test. Training commands get ``trainer.max_steps=2``
appended (the only change), so that they end in seconds."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from helpers import REPO  # noqa: E402

pytestmark = pytest.mark.threestudio

KNOWN_NOISE = ("pkg_resources is deprecated", "torch.cuda.amp", "mediapipe", "timm.models", "Overwriting tiny_vit")


def readme_commands(section: str):
    """The command lines of the fenced blocks in the README's ``## <section>``."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("python ")]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A threestudio checkout's root as a user has it: launch.py, threestudio/, configs, and this
    repository in custom/antijanus (threestudio's own files linked, not copied)."""
    import threestudio

    source = os.path.dirname(os.path.dirname(threestudio.__file__))
    root = tmp_path_factory.mktemp("threestudio-checkout")
    for name in ("launch.py", "threestudio", "configs", "extern", "load"):
        if os.path.exists(os.path.join(source, name)):
            os.symlink(os.path.join(source, name), root / name)
    os.makedirs(root / "custom")
    os.symlink(REPO, root / "custom" / "antijanus")
    return root


def user_env():
    """The environment a user's shell has: none of the variables the test run itself set."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE")}


def run(line: str, cwd, extra=(), timeout=600):
    args = shlex.split(line)
    assert args[0] == "python"
    return subprocess.run([sys.executable, *args[1:], *extra], cwd=cwd, env=user_env(), capture_output=True,
                          text=True, timeout=timeout)


def hub_reachable() -> bool:
    import huggingface_hub

    try:
        huggingface_hub.model_info("stabilityai/stable-diffusion-2-1-base", timeout=5)
        return True
    except Exception:
        return False


def test_the_cpu_command_without_local_models_stops_in_one_message(checkout):
    if hub_reachable():
        pytest.skip("the model hub is reachable here: the command would download Stable Diffusion")
    (line,) = readme_commands("Running on a CPU")
    done = run(line, checkout, extra=["trainer.max_steps=2"])
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert "a model cannot be loaded, nothing was trained" in output
    assert "system.guidance.pretrained_model_name_or_path='stabilityai/stable-diffusion-2-1-base'" in output
    assert "--models DIR" in output and len(output.splitlines()) < 40
    assert not any(noise in output for noise in KNOWN_NOISE), output[:3000]


def test_the_hub_free_commands_train_as_written(checkout):
    make, train = readme_commands("Running without the model hub")
    made = run(make, checkout)
    assert made.returncode == 0, made.stderr[-2000:]
    assert all(os.path.isdir(checkout / "models" / name) for name in ("sd", "if", "bert", "blip", "clip"))
    done = run(train, checkout, extra=["trainer.max_steps=2", "use_timestamp=false", "tag=readme"])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"system.guidance.pretrained_model_name_or_path={checkout / 'models' / 'sd'}: --models" in output
    assert f"system.prompt_processor.pretrained_model_name_or_path={checkout / 'models' / 'sd'}" in output
    assert os.path.isfile(checkout / "outputs" / "perp-neg-nerf-sd" / "readme" / "ckpts" / "last.ckpt")
    assert not any(noise in output for noise in KNOWN_NOISE), [l for l in output.splitlines() if "Warning" in l]


def test_verbose_shows_the_filtered_warnings(checkout):
    (_, train) = readme_commands("Running without the model hub")
    if not os.path.isdir(checkout / "models" / "sd"):
        pytest.skip("needs the models of test_the_hub_free_commands_train_as_written")
    done = run(train, checkout, extra=["--verbose", "trainer.max_steps=1", "use_timestamp=false", "tag=verbose"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.cuda.amp" in done.stderr


def test_outside_a_threestudio_checkout_the_cpu_command_says_what_to_do(tmp_path):
    os.makedirs(tmp_path / "custom")
    os.symlink(REPO, tmp_path / "custom" / "antijanus")
    (line,) = readme_commands("Running on a CPU")
    done = run(line, tmp_path, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert "threestudio is not importable: run this from a threestudio checkout" in output
    assert len(output.strip().splitlines()) <= 2


def test_the_gpu_command_without_the_hub_stops_before_anything_loads(checkout):
    """launch.py as the README shows it: the plugin checks the config's models when threestudio
    loads it, before the config is read into a system (here: no hub, no GPU)."""
    if hub_reachable():
        pytest.skip("the model hub is reachable here")
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], env=user_env(), capture_output=True)
    if probe.returncode != 0:  # a CPU machine with PyPI's CUDA torchvision: launch.py cannot even import
        pytest.skip("plain launch.py cannot import pytorch_lightning here (torchvision's C extension)")
    (line,) = readme_commands("Running on a GPU")
    done = run(line, checkout, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert "system.guidance.pretrained_model_name_or_path='stabilityai/stable-diffusion-2-1-base'" in output
    assert "nothing was trained" in output
