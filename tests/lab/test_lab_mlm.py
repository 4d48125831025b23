"""The lab's masked LM (mlm v2, word-level statistics): its settings' validation, the caption
augmentation it trains on, and the committed model's pre-registered debiasing gate (the seventh
entry's item 6, docs/preregistration.md) through the dsds-full variant's processor."""

import collections
import random

import pytest
import torch

from antijanus.utils.errors import ConfigError
from janus_lab.data import ATTRIBUTE_WORDS
from janus_lab.experiment3d.lab_models import LabModels
from janus_lab.experiment3d.prompts import (PromptFactory, append_per_view_prompts, debiasing_gate, gate_lines,
                                            per_view_prompt_lines)
from janus_lab.mlm import MLMSettings, SentenceBatcher, caption_variant, caption_words, drop_words, masked_loss
from janus_lab.world import KINDS, OPTIONAL_ATTRIBUTES
from antijanus.utils.cache import write_json
from antijanus.utils.naming import slug

WORDS = {"a", "that", "is", "and", "wearing", "with", *KINDS, *ATTRIBUTE_WORDS.values()}


def test_settings_reject_bad_values_naming_the_key():
    MLMSettings(p_word_dropout=0.0, p_rephrase=1.0, view_smoothing=0.0)  # v1's captions, all rephrased
    for bad, key in ((dict(p_word_dropout=1.0), "p_word_dropout"), (dict(p_word_dropout=-0.1), "p_word_dropout"),
                     (dict(p_word_dropout="0.3"), "p_word_dropout"), (dict(p_rephrase=1.5), "p_rephrase"),
                     (dict(p_rephrase=True), "p_rephrase"), (dict(view_smoothing=1.0), "view_smoothing"),
                     (dict(view_smoothing=float("nan")), "view_smoothing"), (dict(p_mask_other=2.0), "p_mask_other"),
                     (dict(steps=0), "steps"), (dict(batch=2.5), "batch"), (dict(heads=3), "heads"),
                     (dict(lr=0.0), "lr"), (dict(threads=True), "threads")):
        with pytest.raises(ConfigError, match=key):
            MLMSettings(**bad)


def test_documented_defaults():
    s = MLMSettings()
    assert (s.p_word_dropout, s.p_rephrase, s.view_smoothing, s.steps, s.threads) == (0.3, 0.5, 0.1, 4000, 1)


def test_word_dropout_never_leaves_a_caption_without_a_content_word():
    rng = random.Random(0)
    words = ["a", "smiling", "bear", "wearing", "a", "hat"]
    for p in (0.0, 0.3, 0.9, 0.999):
        for _ in range(500):
            kept = drop_words(words, ["bear", "smiling", "hat"], p, rng)
            assert kept and any(w in ("bear", "smiling", "hat") for w in kept)
            assert collections.Counter(kept) <= collections.Counter(words)  # a subset, in order
    assert drop_words(words, ["bear"], 0.0, rng) == words
    assert drop_words(["a", "frog"], ["frog"], 0.99, random.Random(1)) in (["frog"], ["a", "frog"])


def test_caption_variants_name_only_visible_attributes_and_vary():
    settings, rng = MLMSettings(), random.Random(0)
    for visible in ((), ("face", "smiling"), ("striped", "tail", "hat"), ("face", "smiling", "hat")):
        seen = collections.Counter(caption_variant("robot", visible, settings, rng) for _ in range(3000))
        for caption in seen:
            words = caption.split()
            assert words and set(words) <= WORDS
            named = {a for a in OPTIONAL_ATTRIBUTES if ATTRIBUTE_WORDS[a] in words}
            assert named <= set(visible)  # never an attribute the image does not show
            assert "robot" in words or named
        assert "robot" in seen.keys() or len(visible) > 1  # the kind alone (rest dropped) occurs
        assert any("robot" not in c.split() for c in seen) == bool(set(visible) & set(OPTIONAL_ATTRIBUTES))
    forms = {" ".join(caption_words("bear", ("smiling", "striped", "hat"), True, random.Random(i))) for i in range(60)}
    assert "a smiling striped bear wearing a hat" in forms and "a striped smiling bear wearing a hat" in forms
    assert any(f.startswith("a bear that is ") for f in forms) and any("with a hat" in f for f in forms)
    assert " ".join(caption_words("bear", ("smiling",), False, random.Random(0))) == "a smiling bear"


def test_the_view_target_is_smoothed_over_the_view_words():
    """With view_smoothing the view position's loss is (1 - s) CE(true word) + s mean CE(view words);
    0 is v1's plain cross-entropy."""
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 10)
            self.cls = torch.nn.Identity()

        def bert(self, input_ids, attention_mask):
            return (self.embed(input_ids),)

    model, ids = Tiny(), torch.tensor([[1, 2, 3]])
    labels = torch.tensor([[-100, 4, -100]])
    log_p = torch.log_softmax(model.embed(ids)[0, 1], dim=-1)
    views = torch.tensor([4, 5, 6])
    plain = masked_loss(model, ids, torch.ones_like(ids), labels, 1, views, 0.0)
    assert plain.item() == pytest.approx(-log_p[4].item(), rel=1e-5)
    smooth = masked_loss(model, ids, torch.ones_like(ids), labels, 1, views, 0.2)
    assert smooth.item() == pytest.approx(-(0.8 * log_p[4] + 0.2 * log_p[views].mean()).item(), rel=1e-5)


def test_sentence_batcher_pads_and_matches_the_tokenizer():
    from transformers import BertTokenizer  # the committed model's vocabulary (a test-only need)
    from janus_lab.model_files import model_path  # beside the import above

    tokenizer = BertTokenizer.from_pretrained(model_path("mlm"))
    batcher = SentenceBatcher(tokenizer)
    texts = ["a smiling bear", "bear that is smiling and wearing a hat"]
    ids, mask = batcher(texts)
    reference = tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(ids, reference.input_ids) and torch.equal(mask, reference.attention_mask)


@pytest.fixture(scope="module")
def gate():
    return debiasing_gate(LabModels.default().mlm)


def test_the_committed_mlm_passes_its_preregistered_gate(gate):
    """Seventh entry, item 6: for each kind, through bert-pmi-prompt-processor with
    dsds-full-nerf-sd.yaml's settings, the back view of "a smiling <kind>" lacks "smiling" and
    keeps the kind, its front view keeps both, "a <kind>" is unchanged in every view, and
    P(front | "a smiling <kind>") > P(front | "a <kind>")."""
    assert set(gate["kinds"]) == set(KINDS)
    for kind, result in gate["kinds"].items():
        views = result["prompts_vd"][f"a smiling {kind}"]
        back, front = views["back"].split(", ")[0].split(), views["front"].split(", ")[0].split()
        assert "smiling" not in back and kind in back, views
        assert "smiling" in front and kind in front, views
        assert all(p.split(", ")[0] == f"a {kind}" for p in result["prompts_vd"][f"a {kind}"].values())
        assert result["p_front"][f"a smiling {kind}"] > result["p_front"][f"a {kind}"]
        assert result["passed"], result["checks"]
    assert gate["passed"]
    printed = "\n".join(gate_lines(gate))
    assert "PASSED" in printed and "| a smiling frog | " in printed


def test_the_gate_fails_a_masked_lm_that_keeps_the_prompt_whole():
    """The gate's checks bite: a scorer whose view probabilities ignore the words (every PMI 1)
    keeps "smiling" in the back view, and P(front) does not rise."""

    class Flat:
        def view_probabilities(self, prompts, view_words):
            return torch.full((len(prompts), len(view_words)), 1.0 / len(view_words))

    factory = PromptFactory(LabModels.default())
    factory._scorer = Flat()
    result = debiasing_gate("flat", kinds=("bear",), factory=factory)
    checks = result["kinds"]["bear"]["checks"]
    assert not result["passed"] and not checks["back_lacks_smiling"] and not checks["p_front_rises"]
    assert checks["plain_unchanged"] and checks["front_keeps_both"]


def test_per_view_prompts_are_printed_from_the_experiments_records(tmp_path):
    prompts_dir = tmp_path / "prompts"
    write_json(str(prompts_dir / f"dsds-full--{slug('a smiling bear')}.json"), {
        "prompt": "a smiling bear", "negative_prompt": "",
        "prompts_vd": {"side": "a smiling bear, side view", "front": "a smiling bear, front view",
                       "back": "a bear, back view", "overhead": "a bear, top view"},
        "debiasing": {"removed": {"side": [], "front": [], "back": ["smiling"], "overhead": ["smiling"]},
                      "kept_whole": []}})
    lines = per_view_prompt_lines(str(prompts_dir), ["baseline", "dsds-full"], ["a bear", "a smiling bear"])
    rows = [line for line in lines if line.startswith("| dsds-full")]
    assert len(rows) == 1 and "| a bear, back view |" in rows[0] and "back: smiling" in rows[0]
    assert not any(line.startswith("| baseline") for line in lines)  # no record: left out
    table = tmp_path / "table.md"
    table.write_text("# table\n")
    append_per_view_prompts(str(table), str(prompts_dir), ["dsds-full"], ["a smiling bear"])
    text = table.read_text()
    assert text.startswith("# table\n") and "Per-view prompts" in text and "a bear, top view" in text
