"""The GPU scripts say in one line what they need before doing anything, on a machine without it."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")


@pytest.mark.parametrize("script, args, message", [
    ("bench_guidance.py", ["--device", "cuda"], "--device cuda: no CUDA device here"),
    ("gpu_smoke.py", [], "needs a CUDA GPU (none here); --cpu checks the script itself"),
])
def test_without_a_gpu_the_script_says_so_in_one_line(script, args, message, tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not os.listdir(tmp_path)  # nothing written
