"""The repository installs as a threestudio extension: cloned into a `custom/` folder, with no
symlink, threestudio's launch.py loads it from its root __init__.py and runs a shipped config by
the `custom/antijanus/configs/...` path; loading it twice stays safe (threestudio tier)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO  # noqa: E402

pytestmark = pytest.mark.threestudio

ROOT = REPO


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    work = tmp_path_factory.mktemp("extension")
    target = work / "custom" / "antijanus"
    subprocess.run(["git", "clone", "-q", ROOT, str(target)], check=True)
    # the working tree under test, not only its last commit: tracked and new files, not ignored ones
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source, copy = os.path.join(ROOT, name), target / name
        if os.path.isfile(source):
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
        elif copy.exists():
            copy.unlink()  # deleted in the working tree
    return work


def env_with_threestudio():
    import threestudio

    root = os.path.dirname(os.path.dirname(threestudio.__file__))
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])), root


def test_launcher_loads_the_clone_twice_without_conflict(clone):
    """threestudio's own loader (launch.py's load_custom_module) on the cloned root, twice."""
    env, threestudio_root = env_with_threestudio()
    script = textwrap.dedent(f"""
        import sys
        from antijanus.cpu import prepare_threestudio_import
        prepare_threestudio_import()
        import threestudio
        sys.path.insert(0, {threestudio_root!r})
        sys.argv = ["launch.py", "--config", "x", "--train"]
        import importlib.util
        spec = importlib.util.spec_from_file_location("launch", {os.path.join(threestudio_root, "launch.py")!r})
        launch = importlib.util.module_from_spec(spec); spec.loader.exec_module(launch)
        assert launch.load_custom_module("custom/antijanus")
        assert launch.load_custom_module("custom/antijanus")  # a second load is safe
        import antijanus
        print(antijanus.__file__)
        for name in ("perp-neg-sds-guidance", "dsds-guidance", "bert-pmi-prompt-processor", "dnp-prompt-processor"):
            print(name, sys.modules[threestudio.find(name).__module__].__file__)
        import os
        print("modules", " ".join(os.path.realpath(m.__file__) for n, m in sys.modules.items()
                                  if (n == "antijanus" or n.startswith("antijanus.")) and getattr(m, "__file__", None)))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()[-6:]
    clone_package = os.path.realpath(clone / "custom" / "antijanus" / "custom" / "antijanus")
    assert lines[0].startswith(str(clone / "custom" / "antijanus" / "custom" / "antijanus")), \
        "the clone's package, not another installed copy"
    assert all(os.path.realpath(line.split(" ", 1)[1]).startswith(clone_package) for line in lines[1:5]), lines
    # antijanus.cpu was imported from the installed copy first: nothing of that copy may remain
    modules = lines[5].split()[1:]
    assert len(modules) > 10 and all(m.startswith(clone_package + os.sep) for m in modules), modules


def test_cloned_extension_trains_a_shipped_config(clone, tiny_sd):
    env, threestudio_root = env_with_threestudio()
    result = subprocess.run(
        [sys.executable, "custom/antijanus/scripts/threestudio_cpu.py", "--launch",
         os.path.join(threestudio_root, "launch.py"), "--config", "custom/antijanus/configs/perp-neg-nerf-sd.yaml",
         "--train", "--small", "trainer.max_steps=1", "use_timestamp=false", "name=ext", "tag=run",
         "system.prompt_processor.prompt=a corgi", f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd}",
         f"system.guidance.pretrained_model_name_or_path={tiny_sd}"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    assert "IMPORT FAILED" not in result.stdout
    assert (clone / "outputs" / "ext" / "run" / "ckpts" / "last.ckpt").exists()
