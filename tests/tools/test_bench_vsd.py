"""scripts/bench_vsd.py run as the README writes it (README, "Research tools"): from a threestudio
checkout its tiny path times ours against threestudio's VSD guidance and prints the ratio, one
full UNet per guidance (threestudio tier); without threestudio, or with --device cuda and no GPU,
it says so in one line and writes nothing."""

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from helpers import REPO  # noqa: E402

ROWS = ("ours (Perp-Neg off)", "ours (Perp-Neg on)", "threestudio")


def readme_line() -> str:
    """The bench_vsd.py command of the README's "Research tools" section."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    tools = text[text.index("\n## Research tools\n"):text.index("\n### Ablation sweeps\n")]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", tools, flags=re.S)
             for line in block.splitlines() if "bench_vsd.py" in line]
    assert len(lines) == 1, lines
    return lines[0]


def user_env() -> dict:
    """A user's shell: none of the variables the test run set (threestudio's PYTHONPATH)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(line: str, cwd, *extra):
    args = shlex.split(line)
    assert args[0] == "python"
    return subprocess.run([sys.executable, *args[1:], *extra], cwd=cwd, env=user_env(), capture_output=True,
                          text=True, timeout=600)


def user_folder(root, with_threestudio: bool):
    """A folder holding this repository as custom/antijanus, and threestudio's checkout (launch.py,
    threestudio/, extern/) linked in when asked."""
    os.makedirs(root / "custom")
    os.symlink(REPO, root / "custom" / "antijanus")
    if with_threestudio:
        import threestudio  # threestudio tier: the checkout the test run imports

        source = os.path.dirname(os.path.dirname(threestudio.__file__))
        for name in ("launch.py", "threestudio", "extern"):
            os.symlink(os.path.join(source, name), root / name)
    return root


def one_line_error(done, message: str) -> None:
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and message in errors[0], done.stderr[-3000:]


def test_without_threestudio_the_bench_says_what_to_do(tmp_path):
    folder = user_folder(tmp_path, with_threestudio=False)
    probe = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('threestudio') is not None)"],
                           cwd=folder, env=user_env())
    if probe.returncode:
        pytest.skip("threestudio is installed in this environment")
    done = run(readme_line(), folder)
    one_line_error(done, "needs threestudio importable: run it from a threestudio checkout")
    assert sorted(os.listdir(folder)) == ["custom"]  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_device_cuda_without_a_gpu_says_so(tmp_path):
    done = run(readme_line(), user_folder(tmp_path, with_threestudio=False), "--device", "cuda")
    one_line_error(done, "--device cuda: no CUDA device here")


@pytest.mark.threestudio
def test_the_tiny_bench_times_both_guidances_from_a_threestudio_checkout(tmp_path):
    done = run(readme_line(), user_folder(tmp_path, with_threestudio=True), "--threads", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "device=cpu" in done.stdout and "threads=1" in done.stdout and "size=tiny" in done.stdout
    assert "lora model=the same (one UNet, shared)" in done.stdout
    rows = {line[:22].strip(): line[22:].split() for line in done.stdout.splitlines() if line[:22].strip() in ROWS}
    assert set(rows) == set(ROWS), done.stdout
    for label, fields in rows.items():
        ms, _spread, _ratio, _rows, _peak, unets, frozen, trainable, _mib = fields
        assert float(ms) > 0 and int(unets) == 1, (label, fields)  # one full UNet: the LoRA is hooks on it
        assert trainable == rows["threestudio"][7] and frozen == rows["threestudio"][6]  # the same LoRA, UNet
    assert float(rows["threestudio"][2]) == 1.0
    assert float(rows["ours (Perp-Neg off)"][3]) == float(rows["threestudio"][3]) == 4.0  # rows at batch 1
    assert float(rows["ours (Perp-Neg on)"][3]) > 4.0
