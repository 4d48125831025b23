"""Captioner plugins (prompting/captioning.py: a folder whose antijanus_captioner.json names an
importable class) and the Janus lab's captioner (janus_lab.captioner) through them: directly,
in dnp-prompt-processor and in scripts/dnp_2d.py."""

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from janus_lab.captioner import LabCaptioner
from janus_lab.locations import lab_root
from janus_lab.model_files import model_path
from janus_lab.world import Creature, render
from antijanus.prompting.captioning import PLUGIN_MARKER, captioner_plugin, check_captioner, load_captioner
from antijanus.utils.errors import ConfigError
from helpers import one_thread


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
LAB_CAPTIONER = os.path.join(lab_root(), "captioner")
WORLD_CAPTION = re.compile(r"^a (smiling )?(striped )?(bear|robot|frog)( wearing a hat)?$")


pytestmark = pytest.mark.usefixtures(one_thread.__name__)  # the fixture, imported


# ----------------------------------------------------------------------------- the plugin hook


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """An importable module with a captioner class (outside antijanus)."""
    code = textwrap.dedent('''
        from antijanus.utils.errors import ConfigError

        class EchoCaptioner:
            def __init__(self, folder, device="cpu", max_new_tokens=30, key="captioner", word="echo"):
                self.folder, self.device, self.max_new_tokens, self.word = folder, device, max_new_tokens, word

            @classmethod
            def check(cls, folder, key="captioner", word="echo"):
                if word == "bad":
                    raise ConfigError(key, folder, "word must not be bad")

            def caption(self, images, progress=False):
                return [f"{self.word} {i}" for i in range(len(images))]

        class Mute:
            pass
    ''')
    (tmp_path / "echo_captioner_plugin.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "echo_captioner_plugin"


def plugin_folder(root, spec):
    folder = root / "captioner"
    folder.mkdir(exist_ok=True)
    (folder / PLUGIN_MARKER).write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return str(folder)


def test_a_plugin_folder_names_its_captioner_class(plugin_module, tmp_path):
    folder = plugin_folder(tmp_path, {"class": f"{plugin_module}:EchoCaptioner", "options": {"word": "hello"}})
    check_captioner(folder)
    captioner = load_captioner(folder, device="cpu", max_new_tokens=7)
    assert type(captioner).__name__ == "EchoCaptioner"
    assert (captioner.folder, captioner.max_new_tokens, captioner.word) == (folder, 7, "hello")
    assert captioner.caption(torch.rand(2, 3, 8, 8)) == ["hello 0", "hello 1"]
    # "module.Class" works as well as "module:Class"; options may be left out
    dotted = plugin_folder(tmp_path, {"class": f"{plugin_module}.EchoCaptioner"})
    assert load_captioner(dotted).caption(torch.rand(1, 3, 8, 8)) == ["echo 0"]


@pytest.mark.parametrize("spec, message", [
    ("{not json", "cannot be read"),
    ({"options": {}}, "must hold"),
    ({"class": "x:Y", "options": [1]}, "must hold"),
    ({"class": "no_such_module_here:Captioner"}, "cannot be imported"),
    ({"class": "{module}:Missing"}, "cannot be imported"),
    ({"class": "{module}:Mute"}, "no caption"),
    ({"class": "{module}:EchoCaptioner", "options": {"word": "bad"}}, "word must not be bad"),
])
def test_bad_plugin_folders_are_configuration_errors(plugin_module, tmp_path, spec, message):
    if isinstance(spec, dict) and "class" in spec:
        spec = {**spec, "class": spec["class"].format(module=plugin_module)}
    folder = plugin_folder(tmp_path, spec)
    with pytest.raises(ConfigError, match=f"captioner.*{message}"):
        check_captioner(folder)
    with pytest.raises(ConfigError, match="caption_max_new_tokens"):
        check_captioner(plugin_folder(tmp_path, {"class": f"{plugin_module}:EchoCaptioner"}), max_new_tokens=0)


def test_folders_without_the_marker_are_blip_folders(tmp_path):
    assert captioner_plugin(str(tmp_path)) is None and captioner_plugin("Salesforce/blip-image-captioning-base") is None
    with pytest.raises(ConfigError, match="BLIP"):
        check_captioner(str(tmp_path))


def test_prompting_never_imports_the_lab():
    code = ("import sys, antijanus.prompting.captioning, antijanus.prompting.dnp, antijanus.prompting.debias; "
            "print(sorted(m for m in sys.modules if m.startswith('janus_lab')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-1000:]


# ----------------------------------------------------------------------------- the lab captioner


@pytest.fixture(scope="module")
def lab_captioner():
    return load_captioner(LAB_CAPTIONER)


def test_lab_captioner_writes_the_worlds_grammar_from_the_judge(lab_captioner):
    check_captioner(LAB_CAPTIONER)
    creatures = [Creature("bear", smiling=True, hat=True), Creature("robot", striped=True, smiling=True),
                 Creature("frog")]
    images = render(creatures, torch.tensor([10.0, 10.0, 10.0]), torch.tensor([0.0, 180.0, 90.0]))["image"]
    # what a captioner sees: the smile from the front, the stripes (not the smile) from behind
    assert lab_captioner.caption(images) == ["a smiling bear wearing a hat", "a striped robot", "a frog"]
    with_view = LabCaptioner(LAB_CAPTIONER, judge="../judge", view_phrase=True, max_new_tokens=30)
    assert with_view.caption(images[1:2]) == ["a striped robot, back view"]
    assert LabCaptioner(LAB_CAPTIONER, judge="../judge", max_new_tokens=2).caption(images[:1]) == ["a smiling"]


def test_lab_captioner_checks_its_judge_folder(tmp_path):
    folder = plugin_folder(tmp_path, {"class": "janus_lab.captioner:LabCaptioner",
                                      "options": {"judge": "../no-judge"}})
    with pytest.raises(ConfigError, match="captioner.*judge folder"):
        check_captioner(folder)
    folder = plugin_folder(tmp_path, {"class": "janus_lab.captioner:LabCaptioner",
                                      "options": {"judge": os.path.abspath(os.path.join(LAB_CAPTIONER, "..", "judge")),
                                                  "view_phrase": "yes"}})
    with pytest.raises(ConfigError, match="view_phrase"):
        check_captioner(folder)


def test_dnp_prompt_processor_with_the_lab_prior_and_captioner(tmp_path, monkeypatch):
    import threestudio  # the real one or tests/threestudio_stub (conftest): only where a test needs it

    importlib.import_module("antijanus.adapters")  # registers the plugin's modules with threestudio
    monkeypatch.chdir(tmp_path)
    processor = threestudio.find("dnp-prompt-processor")({
        "pretrained_model_name_or_path": model_path("prior"), "prompt": "a smiling bear", "spawn": False,
        "captioner": LAB_CAPTIONER, "dns_steps": 2, "dnp_output_dir": str(tmp_path / "dnp")})
    n_star = processor.dnp.negative_prompt
    assert WORLD_CAPTION.match(n_star) and processor.negative_prompt == n_star
    assert json.load(open(tmp_path / "dnp" / "dnp.json"))["negative_prompt"] == n_star


def test_dnp_2d_script_with_the_lab_captioner(tmp_path):
    out = tmp_path / "dnp"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "dnp_2d.py"), "a striped frog",
                           "--model", model_path("prior"), "--captioner", LAB_CAPTIONER, "--steps", "2",
                           "--device", "cpu", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.load(open(out / "dnp.json"))
    assert record["captioned"] and WORLD_CAPTION.match(record["negative_prompt"])


def test_plugin_judge_folder_reads_only_lab_captioner_folders(tmp_path):
    """A run's key follows the judge a lab captioner folder names; another plugin class, a BLIP
    folder or a folder without the marker names none. The marker is the plugin loader's."""
    import json as _json

    from antijanus.prompting.captioning import PLUGIN_MARKER
    from janus_lab import captioner

    assert captioner.PLUGIN_MARKER == PLUGIN_MARKER
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / PLUGIN_MARKER).write_text(_json.dumps(
        {"class": "janus_lab.captioner:LabCaptioner", "options": {"judge": "../judge-x"}}))
    assert captioner.plugin_judge_folder(str(tmp_path / "lab")) == str(tmp_path / "judge-x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / PLUGIN_MARKER).write_text(_json.dumps({"class": "some.module:Other", "options": {}}))
    assert captioner.plugin_judge_folder(str(tmp_path / "other")) is None
    assert captioner.plugin_judge_folder(str(tmp_path)) is None
