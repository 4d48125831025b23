"""threestudio's own load_config with a shipped config (threestudio tier): the `antijanus_tag`
resolver is registered by importing the plugin, before the config is read; a 500-word prompt
makes a trial folder threestudio can create (with `${rmspace:...}`: OSError: File name too long);
`prompt=` with no value names system.prompt_processor.prompt (threestudio: an AttributeError)."""

import os

import pytest
from helpers import REPO

pytestmark = pytest.mark.threestudio

CONFIG = os.path.join(REPO, "configs", "dsds-nerf-sd.yaml")
LONG_PROMPT = " ".join(["a smiling corgi wearing a very tall red hat, sitting on a wooden chair"] * 40)


def load(tmp_path, prompt):
    import antijanus
    from threestudio.utils.config import load_config  # threestudio: the tier's subject

    antijanus.register_threestudio_modules()  # as threestudio's launcher loading custom/ does
    return load_config(CONFIG, cli_args=[f"system.prompt_processor.prompt={prompt}",
                                         f"exp_root_dir={tmp_path}/outputs"])


def test_a_500_word_prompt_makes_a_trial_folder(tmp_path):
    cfg = load(tmp_path, LONG_PROMPT)
    assert os.path.isdir(cfg.trial_dir)  # created by threestudio's ExperimentConfig
    assert len(os.path.basename(cfg.trial_dir).encode()) <= 100 + len("@YYYYMMDD-HHMMSS")


def test_an_ordinary_prompt_keeps_threestudios_folder_name(tmp_path):
    assert os.path.basename(load(tmp_path, "a DSLR photo of a corgi").trial_dir).startswith("a_DSLR_photo_of_a_corgi@")


def test_no_prompt_names_the_key(tmp_path):
    with pytest.raises(Exception, match="system.prompt_processor.prompt"):
        load(tmp_path, "")
