"""`bert-pmi-prompt-processor` and `bert-pmi-deep-floyd-prompt-processor` as threestudio builds
them (real threestudio when importable, else the stub's PromptProcessor base)."""

import json
import logging
import os
import types

import pytest
import torch
from omegaconf import OmegaConf

import antijanus.prompting.mlm
import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules)
from antijanus.utils.errors import ConfigError
from antijanus.core.guidance import ScoreDistillationGuidance
from antijanus.core.guidance_config import ScoreDistillationConfig
from antijanus.testing.tiny_models import make_bert
from helpers import FakeSystem
from helpers import REPO  # noqa: E402

VIEWS = ("side", "front", "back", "overhead")
ROOT = REPO


class SmilingScorer:
    """Stand-in masked LM: "smiling" pulls towards the front view, nothing else matters."""

    instances = 0

    def __init__(self, *args, **kwargs):
        SmilingScorer.instances += 1
        self.args = args

    def view_probabilities(self, prompts, view_words):
        rows = []
        for prompt in prompts:
            rows.append([0.1, 0.75, 0.05, 0.1] if "smiling" in prompt else [0.25, 0.25, 0.25, 0.25])
        return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture
def stand_in_bert(monkeypatch):
    monkeypatch.setattr(antijanus.prompting.mlm, "MaskedLMViewScorer", SmilingScorer)
    SmilingScorer.instances = 0
    return SmilingScorer


@pytest.fixture
def processor_config(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # threestudio caches under ./.threestudio_cache
    return {"pretrained_model_name_or_path": tiny_sd, "prompt": "a smiling corgi", "spawn": False,
            "protected_words": ["corgi"], "report_path": str(tmp_path / "report" / "debias.json")}


def make(config, name="bert-pmi-prompt-processor"):
    return threestudio.find(name)(config)


def test_debiased_view_prompts_and_paper_view_settings(processor_config, stand_in_bert):
    processor = make(processor_config)
    assert [d.name for d in processor.directions] == list(VIEWS)  # threestudio's order
    assert processor.prompts_vd == [
        "a corgi, side view",  # smiling contradicts the side, back and top views
        "a smiling corgi, front view",
        "a corgi, back view",
        "a corgi, top view",
    ]
    out = processor()
    assert out.text_embeddings_vd.shape == (4, 77, 32)
    assert not torch.equal(out.text_embeddings_vd[0], out.text_embeddings_vd[1])
    # front region halved (D-SDS): azimuth 30 is a side view, 20 a front view
    azimuth, elevation = torch.tensor([20.0, 30.0, 180.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 80.0])
    index = torch.zeros(4, dtype=torch.long)
    for d in out.directions:
        index[d.condition(elevation, azimuth, torch.ones(4))] = out.direction2idx[d.name]
    assert [VIEWS[i] for i in index] == ["front", "side", "back", "overhead"]

    report = json.load(open(processor_config["report_path"]))
    assert report["view_prompts"]["back"] == "a corgi" and report["removed"]["front"] == []
    assert report["table"]["words"] == ["a", "smiling", "corgi"]
    assert report["settings"]["view_words"] == dict(zip(VIEWS, VIEWS))  # threestudio's words
    assert report["settings"]["normalization"] == "none"

    # the output drives the guidance (stock threestudio guidances read the same attributes)
    guidance = ScoreDistillationGuidance(
        ScoreDistillationConfig(pretrained_model_name_or_path=processor_config["pretrained_model_name_or_path"],
                                half_precision_weights=False), "cpu")
    rgb = torch.rand(4, 16, 16, 3, requires_grad=True)
    guidance(rgb, out, elevation=elevation, azimuth=azimuth, camera_distances=torch.ones(4))["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all()


def test_debiasing_is_on_by_default_unlike_threestudio():
    """An intended difference (README key table): threestudio's processors default to
    use_prompt_debiasing: false; ours exist to debias."""
    from threestudio.models.prompt_processors.base import PromptProcessor

    assert PromptProcessor.Config().use_prompt_debiasing is False
    for name in ("bert-pmi-prompt-processor", "bert-pmi-deep-floyd-prompt-processor"):
        assert threestudio.find(name).Config().use_prompt_debiasing is True


def test_second_run_reuses_the_cache_without_the_model(processor_config, stand_in_bert):
    first = make(processor_config)
    second = make(processor_config)
    assert SmilingScorer.instances == 1 and second.prompts_vd == first.prompts_vd


def test_a_view_kept_whole_reports_the_rules_words(processor_config, stand_in_bert, caplog):
    """"a smiling" minus "smiling" is "a": the side, back and top views keep the whole prompt,
    and the report and the log still name the word the rule found contradicting them."""
    with caplog.at_level(logging.INFO):
        processor = make({**processor_config, "prompt": "a smiling", "protected_words": []})
    assert processor.prompts_vd[0] == "a smiling, side view"
    report = json.load(open(processor_config["report_path"]))
    assert report["kept_whole"] == ["side", "back", "overhead"]
    assert report["removed"] == {"side": ["smiling"], "front": [], "back": ["smiling"], "overhead": ["smiling"]}
    assert "view back keeps the whole prompt: removing the words the rule finds contradicting it, " \
           "['smiling'], would leave no content word" in caplog.text


def test_a_corrupt_cached_embedding_is_computed_again(processor_config, stand_in_bert, caplog):
    """threestudio's existence check would take a truncated .pt file as cached and crash in
    torch.load; ours removes it (one warning naming it) and computes it again."""
    from threestudio.models.prompt_processors.base import hash_prompt

    first = make(processor_config)
    model = processor_config["pretrained_model_name_or_path"]
    path = lambda prompt: os.path.join(".threestudio_cache", "text_embeddings", f"{hash_prompt(model, prompt)}.pt")
    back, empty = first.prompts_vd[2], ""
    for prompt in (back, empty):
        with open(path(prompt), "wb") as f:
            f.write(b"PK\x03\x04 truncated by a full disk")
    with caplog.at_level(logging.WARNING, logger="antijanus.utils.cache"):
        second = make(processor_config)
    assert torch.equal(second.text_embeddings_vd[2], first.text_embeddings_vd[2])
    assert torch.equal(second.empty_text_embeddings, first.empty_text_embeddings)
    assert {path(back), path(empty)} == {r.args[0] for r in caplog.records if "unreadable" in r.getMessage()}
    # a file spoiled after the processor was configured: load_from_cache computes it again too
    with open(path(back), "wb") as f:
        f.write(b"garbage")
    assert torch.equal(second.load_from_cache(back), first.text_embeddings_vd[2])
    assert torch.equal(torch.load(path(back)), first.text_embeddings_vd[2])  # rewritten
    with pytest.raises(FileNotFoundError, match="not found"):  # a missing file stays threestudio's error
        second.load_from_cache("a prompt never embedded")


def test_real_tiny_bert_runs_inside_the_processor(processor_config, tmp_path):
    words = "this image is depicting a view of smiling corgi".split()
    processor = make({**processor_config, "debias_model": make_bert(str(tmp_path / "bert"), words)})
    assert all(p.split(",")[0].endswith("corgi") for p in processor.prompts_vd)  # protected


def test_threestudio_debiasing_keys_are_honoured(processor_config, stand_in_bert, tmp_path):
    """A stock config with threestudio's debiasing keys ports by changing the type name."""
    config = {**processor_config, "pretrained_model_name_or_path_prompt_debiasing": "/models/my-bert",
              "prompt_debiasing_mask_ids": [1]}  # only "smiling" may go
    config.pop("protected_words")
    processor = make(config)
    assert SmilingScorer.instances == 1
    assert processor.debias_model == "/models/my-bert"
    assert processor.prompts_vd[0] == "a corgi, side view" and processor.debiased.protected == ["a", "corgi"]
    # use_prompt_debiasing: false -> the view phrases only, no masked LM at all
    SmilingScorer.instances = 0
    plain = make({**processor_config, "use_prompt_debiasing": False})
    assert SmilingScorer.instances == 0 and plain.debiased is None
    assert plain.prompts_vd == [f"a smiling corgi, {v} view" for v in ("side", "front", "back", "top")]


def test_unused_debias_keys_are_reported_when_debiasing_is_off(processor_config, stand_in_bert, caplog):
    with caplog.at_level(logging.WARNING):
        make({**processor_config, "use_prompt_debiasing": False, "pmi_normalization": "mean"})
    assert "have no effect" in caplog.text and "pmi_normalization" in caplog.text


def test_template_with_another_field_fails_before_the_masked_lm_loads(processor_config, stand_in_bert):
    with pytest.raises(ConfigError, match="debias_template.*\\{style\\}"):
        make({**processor_config, "debias_template": "This image is depicting a [MASK] view of {prompt}, {style}"})
    assert SmilingScorer.instances == 0


def cli_config(tmp_path, *dotlist):
    """The processor's config as threestudio's load_config builds it: the YAML merged with the
    command-line overrides, then resolved."""
    for name, fn in (("rmspace", lambda s, sub: s.replace(" ", sub)),):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    yaml = OmegaConf.load(os.path.join(ROOT, "configs", "dsds-full-nerf-sd.yaml"))
    cfg = OmegaConf.merge(yaml, OmegaConf.from_dotlist(["system.prompt_processor.spawn=false", *dotlist]))
    OmegaConf.resolve(cfg)
    return cfg.system.prompt_processor


def test_dict_keys_can_be_overridden_one_entry_at_a_time(processor_config, stand_in_bert, tmp_path, tiny_sd):
    config = cli_config(tmp_path, "system.prompt_processor.prompt=a smiling corgi",
                        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd}",
                        "system.prompt_processor.pmi_view_words.overhead=top",
                        "system.prompt_processor.view_phrases.overhead=overhead view",
                        "system.prompt_processor.protected_words=[corgi]")
    processor = make(config)
    assert processor.settings.view_words == ("side", "front", "back", "top")
    assert processor.prompts_vd[3] == "a corgi, overhead view" and processor.prompts_vd[2] == "a corgi, back view"
    with pytest.raises(ConfigError, match="pmi_view_words.top.*unknown view name"):
        make(cli_config(tmp_path, "system.prompt_processor.prompt=a corgi",
                        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd}",
                        "system.prompt_processor.pmi_view_words.top=top"))


def test_long_prompt_keeps_its_view_phrases(processor_config, stand_in_bert, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(processor_config["pretrained_model_name_or_path"], subfolder="tokenizer")
    long_prompt = "a smiling corgi " + " ".join(["wearing a very tall hat"] * 6)
    assert len(tokenizer(long_prompt).input_ids) > 77  # the tiny CLIP BPE: one token per character
    with caplog.at_level(logging.WARNING):
        processor = make({**processor_config, "prompt": long_prompt})
    phrases = ("side view", "front view", "back view", "top view")
    for text, phrase in zip(processor.prompts_vd, phrases):
        assert text.endswith(", " + phrase) and len(tokenizer(text).input_ids) <= 77, text
    assert processor.prompts_vd[1].startswith("a smiling corgi wearing a very")  # the front keeps "smiling"
    out = processor()
    views = out.text_embeddings_vd
    assert all(not torch.equal(views[i], views[j]) for i in range(4) for j in range(i + 1, 4))
    assert len([r for r in caplog.records if "more than the text encoder's 77" in r.getMessage()]) == 1


def test_a_view_phrase_that_cannot_fit_is_a_config_error_before_the_masked_lm_loads(processor_config,
                                                                                     stand_in_bert):
    with pytest.raises(ConfigError, match="view_phrases.*no room"):
        make({**processor_config, "view_phrases": {"side": "side view " * 10}})
    assert SmilingScorer.instances == 0  # no debiasing ran: the phrase alone is checked first
    # room for "corgi" (76 tokens) but not for "smiling" (78), which debiasing may leave first
    with pytest.raises(ConfigError, match="view_phrases.side.*'smiling'.*no room"):
        make({**processor_config, "view_phrases": {"side": "x" * 68}})
    assert SmilingScorer.instances == 0


def test_the_report_lands_inside_the_trial_folder(processor_config, stand_in_bert, tmp_path):
    trial = tmp_path / "outputs" / "dsds-full-nerf-sd" / "a_smiling_corgi@20250101-000000"
    config = {**processor_config, "report_path": "{trial_dir}/prompt-debiasing.json"}
    FakeSystem(str(trial)).on_fit_start("bert-pmi-prompt-processor", config)
    assert json.load(open(trial / "prompt-debiasing.json"))["view_prompts"]["back"] == "a corgi"
    shipped = OmegaConf.load(os.path.join(ROOT, "configs", "dsds-full-nerf-sd.yaml"))
    assert shipped.system.prompt_processor.report_path.startswith("{trial_dir}/")


class SystemConfiguredFirst(FakeSystem):
    """prolificdreamer-system: its processor is created (and called) in configure, before the
    launcher sets its save folder."""

    def __init__(self, name, config):
        self._save_dir = None
        self.prompt_processor = __import__("threestudio").find(name)(config)
        self.prompt_utils = self.prompt_processor()


def launch_main(trial, name, config):
    """threestudio's launch.py main: its local ``cfg`` (the ExperimentConfig) holds trial_dir while
    it creates the system, then gives the system its save folder."""
    cfg = types.SimpleNamespace(trial_dir=str(trial), system_type="prolificdreamer-system")
    system = SystemConfiguredFirst(name, config)
    system._save_dir = os.path.join(cfg.trial_dir, "save")
    return system


def test_the_report_lands_in_the_trial_folder_of_a_system_that_creates_its_processor_first(
        processor_config, stand_in_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trial = tmp_path / "outputs" / "perp-neg-dsds-vsd-sd" / "a_smiling_corgi@20250101-000000"
    config = {**processor_config, "report_path": "{trial_dir}/prompt-debiasing.json"}
    launch_main(trial, "bert-pmi-prompt-processor", config)
    assert json.load(open(trial / "prompt-debiasing.json"))["view_prompts"]["back"] == "a corgi"
    assert [str(p) for p in tmp_path.rglob("prompt-debiasing.json")] == [str(trial / "prompt-debiasing.json")]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"view_phrases": {"front": "front view", "side": "side view", "back": "back view", "top": "x"}},
         "view_phrases.top.*unknown view name"),
        ({"view_phrases": {"front": " "}}, "view_phrases.*non-empty"),
        ({"prompt": ""}, "prompt.*must not be empty"),
        ({"protected_words": ["cat"]}, "protected_words.*not a word of the prompt"),
        ({"pmi_normalization": "softmax"}, "pmi_normalization.*allowed values"),
        ({"debias_word_units": "chars"}, "debias_word_units.*allowed values"),
        ({"debias_model": "/no/such/bert"}, "debias_model.*does not exist"),
        ({"front_threshold": 100.0, "back_threshold": 100.0},
         r"`system.prompt_processor.front_threshold` = 100.0: front and back regions overlap \(front_threshold 100.0 \+ back_threshold"),
        ({"back_threshold": 200.0}, "`system.prompt_processor.back_threshold` = 200.0: must lie in"),
        ({"overhead_threshold": 95.0}, "`system.prompt_processor.overhead_threshold` = 95.0: must lie in"),
        ({"view_dependent_prompt_front": True}, "view_dependent_prompt_front.*not supported"),
    ],
)
def test_bad_settings_fail_at_configuration(processor_config, override, message):
    with pytest.raises(ConfigError, match=message):
        make({**processor_config, **override})


# --- DeepFloyd IF: T5 without 8 bit, BERT-PMI debiasing ---

def test_deep_floyd_processor_with_debiasing_on_cpu(tiny_if, tmp_path, monkeypatch, stand_in_bert):
    monkeypatch.chdir(tmp_path)
    config = {"pretrained_model_name_or_path": tiny_if, "prompt": "a smiling corgi", "spawn": False,
              "protected_words": ["corgi"]}
    processor = make(config, "bert-pmi-deep-floyd-prompt-processor")
    assert processor.load_in_8bit is False  # auto: full precision where 8 bit cannot work (CPU)
    assert processor.prompts_vd[0] == "a corgi, side view" and processor.prompts_vd[1] == "a smiling corgi, front view"
    out = processor()
    assert out.text_embeddings_vd.shape == (4, 77, 16) and out.empty_text_embeddings.shape == (1, 77, 16)
    # the T5 embedding is threestudio's (77 tokens, attention mask): the IF backbone's own encoder agrees
    from antijanus.backbones import BackboneOptions, DeepFloydIFBackbone

    backbone = DeepFloydIFBackbone(BackboneOptions(pretrained_model_name_or_path=tiny_if,
                                                   half_precision_weights=False), "cpu")
    expected = backbone.encode_prompts(["a corgi, side view"])[0]
    assert torch.allclose(out.text_embeddings_vd[0].float(), expected, atol=1e-5)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="t5_load_in_8bit.*CUDA"):
            make({**config, "t5_load_in_8bit": True}, "bert-pmi-deep-floyd-prompt-processor")


def test_deep_floyd_processor_keeps_view_phrases_of_long_prompts(tiny_if, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long_prompt = "a corgi " + " ".join(["wearing a very tall hat"] * 12)
    processor = make({"pretrained_model_name_or_path": tiny_if, "prompt": long_prompt, "spawn": False,
                      "use_prompt_debiasing": False}, "bert-pmi-deep-floyd-prompt-processor")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_if, subfolder="tokenizer")
    for text in processor.prompts_vd:
        assert text.endswith(" view") and len(tokenizer(text).input_ids) <= 77
    assert len(tokenizer(long_prompt + ", side view").input_ids) > 77  # the test is not vacuous


def test_tiny_if_folder_has_a_real_sentencepiece_t5_tokenizer(tiny_if):
    """threestudio's deep-floyd-prompt-processor loads the slow, sentencepiece T5Tokenizer."""
    from transformers import AutoTokenizer, T5Tokenizer

    assert os.path.exists(os.path.join(tiny_if, "tokenizer", "spiece.model"))
    slow = T5Tokenizer.from_pretrained(tiny_if, subfolder="tokenizer")
    fast = AutoTokenizer.from_pretrained(tiny_if, subfolder="tokenizer")
    text = "a zoomed out DSLR photo of a corgi, side view"
    assert slow(text).input_ids == fast(text).input_ids and slow(text).input_ids[-1] == 1  # </s>
    assert slow.unk_token_id not in slow(text).input_ids
