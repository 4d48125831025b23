import pytest
import torch

from antijanus.prompting.debias import (
    DebiasSettings,
    cached_debias,
    debias_prompt,
    pointwise_mutual_information,
    remove_words,
    split_words,
)
from antijanus.utils.errors import ConfigError

TWO_VIEWS = dict(views=("front", "back"), view_words=("front", "back"))


class TableScorer:
    """Deterministic stand-in masked LM: chosen P(front), per sentence (P(back) = 1 - P(front))."""

    def __init__(self, p_front, default=0.8):
        self.p_front, self.default, self.calls = p_front, default, []

    def view_probabilities(self, prompts, view_words):
        self.calls.append(list(prompts))
        p = torch.tensor([self.p_front.get(s, self.default) for s in prompts], dtype=torch.float64)
        return torch.stack([p, 1 - p], dim=1)


SMILING = {"a smiling corgi": 0.8, "smiling corgi": 0.8, "a corgi": 0.5, "a smiling": 0.7}


def test_pmi_against_a_hand_computed_case():
    result = debias_prompt("a smiling corgi", DebiasSettings(**TWO_VIEWS), TableScorer(SMILING))
    table = result.table
    assert table.words == ["a", "smiling", "corgi"]
    # "smiling": P(v) = 0.5*0.8 + 0.5*0.5 = 0.65 (front), 0.35 (back)
    assert table.pmi[1].tolist() == pytest.approx([0.8 / 0.65, 0.2 / 0.35], abs=1e-6)
    mean = (0.8 / 0.65 + 0.2 / 0.35) / 2
    assert table.normalized[1].tolist() == pytest.approx([0.8 / 0.65 / mean, 0.2 / 0.35 / mean], abs=1e-6)
    # "a" does not move the view distribution: PMI 1 everywhere, kept
    assert table.pmi[0].tolist() == pytest.approx([1.0, 1.0])
    # "corgi": P(v) = 0.75 / 0.25 -> PMI 1.0667 / 0.8, normalised back = 0.8 / 0.9333 < 0.95
    assert table.pmi[2].tolist() == pytest.approx([0.8 / 0.75, 0.8], abs=1e-6)
    assert table.dropped.tolist() == [[False, False], [False, True], [False, True]]


def test_word_is_removed_only_from_the_views_it_contradicts():
    result = debias_prompt("a smiling corgi", DebiasSettings(**TWO_VIEWS, protected_words=("corgi",)),
                           TableScorer(SMILING))
    assert result.view_prompts == {"front": "a smiling corgi", "back": "a corgi"}
    assert result.removed == {"front": [], "back": ["smiling"]}


def test_protected_words_are_never_removed_by_text_or_index():
    for settings in (DebiasSettings(**TWO_VIEWS, protected_words=("Corgi",)),
                     DebiasSettings(**TWO_VIEWS, protected_word_indices=(2,))):
        result = debias_prompt("a smiling corgi", settings, TableScorer(SMILING))
        assert "corgi" in result.view_prompts["back"] and result.protected == ["corgi"]
        assert result.table.pmi[2].tolist() == pytest.approx([1.0, 1.0])  # P(u) = 1 -> PMI = 1
    unprotected = debias_prompt("a smiling corgi", DebiasSettings(**TWO_VIEWS), TableScorer(SMILING))
    assert unprotected.view_prompts["back"] == "a"  # the test above is not vacuous


def test_punctuation_capitalisation_and_spelling_are_preserved():
    prompt = "A Smiling Corgi, wearing a top-hat, DSLR photo."
    words = split_words(prompt)
    assert [w.text for w in words] == ["A", "Smiling", "Corgi", "wearing", "a", "top-hat", "DSLR", "photo"]
    assert remove_words(prompt, [1]) == "A Corgi, wearing a top-hat, DSLR photo."
    assert remove_words(prompt, [3, 4, 5]) == "A Smiling Corgi, DSLR photo."
    assert remove_words("a corgi, smiling", [2]) == "a corgi"
    assert remove_words("smiling, happy corgi", [0]) == "happy corgi"
    assert remove_words("a dog's (smiling) face", [2]) == "a dog's face"
    scorer = TableScorer({prompt: 0.9, remove_words(prompt, [1]): 0.4}, default=0.9)
    result = debias_prompt(prompt, DebiasSettings(**TWO_VIEWS), scorer)
    assert result.view_prompts == {"front": prompt, "back": "A Corgi, wearing a top-hat, DSLR photo."}


def test_all_variants_are_scored_in_one_batch():
    scorer = TableScorer(SMILING)
    debias_prompt("a smiling corgi", DebiasSettings(**TWO_VIEWS), scorer)
    assert scorer.calls == [["a smiling corgi", "smiling corgi", "a corgi", "a smiling"]]


def test_threestudio_rule_with_raw_pmi():
    settings = DebiasSettings(**TWO_VIEWS, normalization="none")
    result = debias_prompt("a smiling corgi", settings, TableScorer(SMILING))
    assert result.table.dropped.tolist() == [[False, False], [False, True], [False, True]]
    assert torch.equal(result.table.normalized, result.table.pmi)


def test_pmi_formula_and_bad_settings():
    pmi = pointwise_mutual_information(torch.tensor([[0.6, 0.4]]), torch.tensor([[0.2, 0.8]]), torch.tensor([0.5]))
    assert pmi.tolist()[0] == pytest.approx([1.5, 2 / 3])
    with pytest.raises(ConfigError, match="prompt.*must not be empty"):
        debias_prompt("  ", DebiasSettings(**TWO_VIEWS), TableScorer({}))
    with pytest.raises(ConfigError, match="protected_words.*not a word of the prompt"):
        debias_prompt("a corgi", DebiasSettings(**TWO_VIEWS, protected_words=("cat",)), TableScorer({}))
    with pytest.raises(ConfigError, match="pmi_normalization.*allowed values"):
        DebiasSettings(**TWO_VIEWS, normalization="softmax").validate()
    with pytest.raises(ConfigError, match="debias_template"):
        DebiasSettings(**TWO_VIEWS, template="no mask {prompt}").validate()


def test_cache_reuse_skips_the_model(tmp_path):
    settings = DebiasSettings(**TWO_VIEWS, protected_words=("corgi",))
    built = []

    def make_scorer():
        built.append(1)
        return TableScorer(SMILING)

    first, path, hit = cached_debias("a smiling corgi", settings, "bert-x", str(tmp_path), make_scorer)
    assert not hit and built == [1]
    second, path2, hit2 = cached_debias("a smiling corgi", settings, "bert-x", str(tmp_path), make_scorer)
    assert hit2 and path2 == path and built == [1]  # no model built the second time
    assert second.view_prompts == first.view_prompts
    assert torch.allclose(second.table.pmi, first.table.pmi)
    # anything that affects the result changes the key
    other = DebiasSettings(**TWO_VIEWS, protected_words=("corgi",), threshold=0.9)
    _, path3, hit3 = cached_debias("a smiling corgi", other, "bert-x", str(tmp_path), make_scorer)
    assert not hit3 and path3 != path and built == [1, 1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # atomic: no leftovers


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from antijanus.testing.tiny_models import make_bert

    words = "this image is depicting a view of smiling corgi front side back top over ##head".split()
    return make_bert(str(tmp_path_factory.mktemp("tiny-bert")), words)


def test_real_bert_classes_end_to_end(tiny_bert):
    from antijanus.prompting.mlm import MaskedLMViewScorer

    scorer = MaskedLMViewScorer(tiny_bert)
    forward_calls = []
    encoder = scorer.model.base_model
    encoder_forward = encoder.forward
    encoder.forward = lambda *a, **k: (forward_calls.append(k.get("input_ids", a[0] if a else None).shape),
                                       encoder_forward(*a, **k))[1]
    original = scorer.model.forward  # the full model, for the reference computation below
    words = ("front", "side", "back", "overhead")
    assert [len(p) for p in scorer.view_pieces(words)] == [1, 1, 1, 2]  # over + ##head
    prompts = ["a smiling corgi", "a corgi"]
    probs = scorer.view_probabilities(prompts, words)
    assert probs.shape == (2, 4) and torch.allclose(probs.sum(1), torch.ones(2, dtype=probs.dtype))
    # one forward: 2 prompts x 2 piece counts, padded to the longest sentence, not to 512
    assert len(forward_calls) == 1 and forward_calls[0][0] == 4 and forward_calls[0][1] < 20
    encoder.forward = encoder_forward

    # the two-piece view word is the product of its pieces' probabilities at two masks
    def log_p(sentence, pieces):
        batch = scorer.tokenizer([sentence], return_tensors="pt")
        logits = original(**batch).logits.log_softmax(-1)[0]
        positions = (batch.input_ids[0] == scorer.tokenizer.mask_token_id).nonzero().flatten()
        return sum(logits[p, t] for p, t in zip(positions, pieces))

    vocab = scorer.tokenizer.convert_tokens_to_ids
    with torch.no_grad():
        one = "This image is depicting a [MASK] view of a corgi"
        two = "This image is depicting a [MASK] [MASK] view of a corgi"
        logs = torch.stack([log_p(one, [vocab("front")]), log_p(one, [vocab("side")]),
                            log_p(one, [vocab("back")]), log_p(two, [vocab("over"), vocab("##head")])])
    assert torch.allclose(probs[1], torch.softmax(logs, 0), atol=1e-5)

    settings = DebiasSettings(views=("front", "side", "back", "overhead"), view_words=words,
                              protected_words=("corgi",))
    result = debias_prompt("A smiling Corgi.", settings, scorer)
    assert set(result.view_prompts) == {"front", "side", "back", "overhead"}
    for view, text in result.view_prompts.items():
        assert text == remove_words("A smiling Corgi.", [i for i, w in enumerate(["A", "smiling", "Corgi"])
                                                         if w in result.removed[view]])
        assert text.endswith("Corgi.")  # protected, original case and punctuation kept


def test_missing_model_folder_is_a_config_error():
    from antijanus.prompting.mlm import MaskedLMViewScorer

    with pytest.raises(ConfigError, match="debias_model.*does not exist"):
        MaskedLMViewScorer("/no/such/bert")
