"""Long and missing prompts: the shipped configs' `tag` is a valid folder name for any prompt
(threestudio's `${rmspace:...}` made a 500-word prompt an `OSError: File name too long`), our
processors train on a 500-word prompt, and `prompt=` with no value is a ConfigError naming
system.prompt_processor.prompt (threestudio: an AttributeError on None)."""

import glob
import os

import pytest
import torch
from omegaconf import OmegaConf

import antijanus.prompting.mlm
import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules and the `antijanus_tag` resolver)
from antijanus.prompting.trial_tag import MAX_TAG_BYTES, prompt_tag, register_tag_resolver
from antijanus.utils.errors import ConfigError

from helpers import REPO
from fakes import SmilingScorer  # noqa: E402

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
LONG_PROMPT = " ".join(["a smiling corgi wearing a very tall red hat, sitting on a wooden chair"] * 40)  # 520 words


def shipped_tag(path, prompt):
    """The `tag` of a shipped config as threestudio's load_config resolves it, with the prompt
    given on the command line."""
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_cli([f"system.prompt_processor.prompt={prompt}"]))
    return cfg.tag


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_shipped_config_makes_a_valid_trial_folder_for_a_500_word_prompt(path, tmp_path):
    tag = shipped_tag(path, LONG_PROMPT)
    assert len(LONG_PROMPT.split()) >= 500 and len(tag.encode()) <= MAX_TAG_BYTES
    os.makedirs(tmp_path / "outputs" / "name" / f"{tag}@20250101-000000")  # OSError before
    assert tag.startswith("a_smiling_corgi_wearing_a_very_tall_red_hat_sitting")


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_shipped_config_keeps_threestudios_tag_for_an_ordinary_prompt(path):
    assert shipped_tag(path, "a DSLR photo of a corgi, wearing a hat") == "a_DSLR_photo_of_a_corgi,_wearing_a_hat"


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_an_empty_prompt_in_a_shipped_config_names_the_key(path):
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_cli(["system.prompt_processor.prompt="]))
    with pytest.raises(Exception, match="`system.prompt_processor.prompt` = None: is empty"):
        cfg.tag


def test_the_tag_is_a_safe_unique_name():
    assert prompt_tag("a corgi") == "a_corgi"
    slashed = prompt_tag("a 1/2 scale model of a car")
    assert "/" not in slashed and slashed.startswith("a_1_2_scale_model")
    one, two = prompt_tag(LONG_PROMPT), prompt_tag(LONG_PROMPT + " at night")
    assert one != two and one[:80] == two[:80]  # the same beginning, told apart by the hash
    wide = prompt_tag("一只戴着红帽子的柯基犬坐在木椅上" * 20)
    assert len(wide.encode()) <= MAX_TAG_BYTES and wide.encode().decode() == wide
    for empty in (None, "", "   "):
        with pytest.raises(ConfigError, match="system.prompt_processor.prompt"):
            prompt_tag(empty)
    register_tag_resolver()  # idempotent
    register_tag_resolver()
    assert OmegaConf.has_resolver("antijanus_tag")


@pytest.fixture
def processor_config(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # threestudio caches under ./.threestudio_cache
    monkeypatch.setattr(antijanus.prompting.mlm, "MaskedLMViewScorer", SmilingScorer)
    return {"pretrained_model_name_or_path": tiny_sd, "spawn": False}


@pytest.mark.parametrize("name, keys", [
    ("bert-pmi-prompt-processor", {"protected_words": ["corgi"]}),
    ("dnp-prompt-processor", {"negative_prompt": "blurry"}),
])
def test_our_processors_train_on_a_500_word_prompt(processor_config, name, keys):
    processor = threestudio.find(name)({**processor_config, **keys, "prompt": LONG_PROMPT})
    out = processor()
    assert out.text_embeddings.shape == (1, 77, 32) and out.text_embeddings_vd.shape == (4, 77, 32)
    assert processor.prompts_vd[2].endswith(", back view")
    assert not torch.equal(out.text_embeddings_vd[0], out.text_embeddings_vd[2])


@pytest.mark.parametrize("name", ["bert-pmi-prompt-processor", "bert-pmi-deep-floyd-prompt-processor",
                                  "dnp-prompt-processor"])
def test_no_prompt_is_a_config_error_naming_the_key(processor_config, name):
    for empty in (None, "  "):
        with pytest.raises(ConfigError) as caught:
            threestudio.find(name)({**processor_config, "prompt": empty})
        assert caught.value.key == "system.prompt_processor.prompt"
