import importlib.util
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests build their models locally; never the hub
REAL_THREESTUDIO = importlib.util.find_spec("threestudio") is not None
from antijanus.cpu import declare_torchvision_op_schemas, prepare_threestudio_import  # noqa: E402

# A torchvision wheel whose C extension does not match this torch (this CPU machine) must still
# import, for open_clip (metrics) and transformers' image processors.
declare_torchvision_op_schemas()
if not REAL_THREESTUDIO:
    # The adapters are tested against a faithful stub of threestudio's registry/BaseObject.
    sys.path.insert(0, os.path.join(HERE, "threestudio_stub"))
else:
    # On a CPU machine threestudio imports only with the CPU mode's import-only stand-ins
    # (tinycudann, nvdiffrast, torchvision op schemas): the same ones the CPU launch tests use.
    prepare_threestudio_import()


@pytest.fixture(scope="session", autouse=True)
def threestudio_on_this_device():
    """threestudio's get_device() always answers cuda:<rank>; on a CPU-only machine point the
    real package's BaseObject at the CPU (the stub already does)."""
    if not REAL_THREESTUDIO:
        yield
        return
    import torch
    import threestudio.utils.base as base

    original = base.get_device
    if not torch.cuda.is_available():
        base.get_device = lambda: torch.device("cpu")
    yield
    base.get_device = original


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs the real threestudio importable (see docs/cpu-mode.md, "
                                   "'Integration tests with threestudio')")
    for item in items:
        if "threestudio" in item.keywords and not REAL_THREESTUDIO:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> str:
    from antijanus.testing.tiny_models import make_stable_diffusion

    return make_stable_diffusion(str(tmp_path_factory.mktemp("tiny-sd")))


@pytest.fixture(scope="session")
def tiny_sd_vpred(tmp_path_factory) -> str:
    from antijanus.testing.tiny_models import make_stable_diffusion

    return make_stable_diffusion(str(tmp_path_factory.mktemp("tiny-sd-v")), seed=1,
                                 prediction_type="v_prediction", with_text_encoder=False)


@pytest.fixture(scope="session")
def tiny_if(tmp_path_factory) -> str:
    from antijanus.testing.tiny_models import make_deepfloyd_if

    return make_deepfloyd_if(str(tmp_path_factory.mktemp("tiny-if")))


from helpers import make_prompt_output  # noqa: E402


@pytest.fixture
def prompt_output():
    return make_prompt_output()
