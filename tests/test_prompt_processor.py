"""`bert-pmi-prompt-processor` as threestudio builds it (real threestudio when importable, else
the stub's PromptProcessor base)."""

import json

import pytest
import torch

import antijanus.prompting.mlm
import threestudio
import antijanus.adapters  # noqa: F401  (registers the modules)
from antijanus.utils.errors import ConfigError
from antijanus.core.guidance import ScoreDistillationConfig, ScoreDistillationGuidance
from antijanus.testing.tiny_models import make_bert

VIEWS = ("side", "front", "back", "overhead")


class SmilingScorer:
    """Stand-in masked LM: "smiling" pulls towards the front view, nothing else matters."""

    instances = 0

    def __init__(self, *args, **kwargs):
        SmilingScorer.instances += 1

    def view_probabilities(self, prompts, view_words):
        rows = []
        for prompt in prompts:
            rows.append([0.1, 0.75, 0.05, 0.1] if "smiling" in prompt else [0.25, 0.25, 0.25, 0.25])
        return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture
def processor_config(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # threestudio caches under ./.threestudio_cache
    return {"pretrained_model_name_or_path": tiny_sd, "prompt": "a smiling corgi", "spawn": False,
            "protected_words": ["corgi"], "report_path": str(tmp_path / "report" / "debias.json")}


def make(config):
    return threestudio.find("bert-pmi-prompt-processor")(config)


def test_debiased_view_prompts_and_paper_view_settings(processor_config, monkeypatch):
    monkeypatch.setattr(antijanus.prompting.mlm, "MaskedLMViewScorer", SmilingScorer)
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

    # the output drives the guidance (stock threestudio guidances read the same attributes)
    guidance = ScoreDistillationGuidance(
        ScoreDistillationConfig(pretrained_model_name_or_path=processor_config["pretrained_model_name_or_path"],
                                half_precision_weights=False), "cpu")
    rgb = torch.rand(4, 16, 16, 3, requires_grad=True)
    guidance(rgb, out, elevation=elevation, azimuth=azimuth, camera_distances=torch.ones(4))["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all()


def test_second_run_reuses_the_cache_without_the_model(processor_config, monkeypatch):
    monkeypatch.setattr(antijanus.prompting.mlm, "MaskedLMViewScorer", SmilingScorer)
    SmilingScorer.instances = 0
    first = make(processor_config)
    second = make(processor_config)
    assert SmilingScorer.instances == 1 and second.prompts_vd == first.prompts_vd


def test_real_tiny_bert_runs_inside_the_processor(processor_config, tmp_path):
    words = "this image is depicting a view of smiling corgi front side back top".split()
    processor = make({**processor_config, "debias_model": make_bert(str(tmp_path / "bert"), words)})
    assert all(p.split(",")[0].endswith("corgi") for p in processor.prompts_vd)  # protected


@pytest.mark.parametrize(
    "override, message",
    [
        ({"view_phrases": {"front": "front view", "side": "side view", "back": "back view", "top": "x"}},
         "view_phrases.top.*unknown view name"),
        ({"prompt": ""}, "prompt.*must not be empty"),
        ({"protected_words": ["cat"]}, "protected_words.*not a word of the prompt"),
        ({"pmi_normalization": "softmax"}, "pmi_normalization.*allowed values"),
        ({"debias_model": "/no/such/bert"}, "debias_model.*does not exist"),
        ({"front_threshold": 100.0, "back_threshold": 100.0}, "front_half_width"),
    ],
)
def test_bad_settings_fail_at_configuration(processor_config, override, message):
    with pytest.raises(ConfigError, match=message):
        make({**processor_config, **override})
