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
NAMES = ("side", "front", "back", "overhead")  # threestudio's directions, in its order


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
    # "a" does not move the view distribution: PMI 1 everywhere, kept
    assert table.pmi[0].tolist() == pytest.approx([1.0, 1.0])
    # "corgi": P(v) = 0.75 / 0.25 -> PMI 1.0667 / 0.8
    assert table.pmi[2].tolist() == pytest.approx([0.8 / 0.75, 0.8], abs=1e-6)
    # default rule (threestudio's): raw PMI < 0.95
    assert torch.equal(table.normalized, table.pmi)
    assert table.dropped.tolist() == [[False, False], [False, True], [False, True]]


def test_normalised_rules_are_named_options():
    mean = debias_prompt("a smiling corgi", DebiasSettings(**TWO_VIEWS, normalization="mean"), TableScorer(SMILING))
    m = (0.8 / 0.65 + 0.2 / 0.35) / 2
    assert mean.table.normalized[1].tolist() == pytest.approx([0.8 / 0.65 / m, 0.2 / 0.35 / m], abs=1e-6)
    # PMI 0.8 of "corgi" for back: normalised 0.8 / 0.9333 < 0.95 and PMI < 1 -> dropped
    assert mean.table.dropped.tolist() == [[False, False], [False, True], [False, True]]
    # a word whose PMI is < 1 but >= 0.95 for a view: kept by threestudio's rule, dropped by "max"
    scorer = TableScorer({"a corgi": 0.6, "corgi": 0.64}, default=0.6)  # "a" pulls towards the back a little
    none = debias_prompt("a corgi", DebiasSettings(**TWO_VIEWS), scorer)
    strict = debias_prompt("a corgi", DebiasSettings(**TWO_VIEWS, normalization="max"), scorer)
    assert 0.95 <= float(none.table.pmi[0, 0]) < 1.0
    assert not none.table.dropped[0, 0] and strict.table.dropped[0, 0]


def test_word_is_removed_only_from_the_views_it_contradicts():
    result = debias_prompt("a smiling corgi", DebiasSettings(**TWO_VIEWS, protected_words=("corgi",)),
                           TableScorer(SMILING))
    assert result.view_prompts == {"front": "a smiling corgi", "back": "a corgi"}
    assert result.removed == {"front": [], "back": ["smiling"]}


def test_protected_words_are_never_removed_by_text_or_index():
    for settings in (DebiasSettings(**TWO_VIEWS, protected_words=("Corgi",)),
                     DebiasSettings(**TWO_VIEWS, protected_word_indices=(2,)),
                     DebiasSettings(**TWO_VIEWS, removable_word_indices=(0, 1))):  # threestudio's mask ids
        result = debias_prompt("a smiling corgi", settings, TableScorer(SMILING))
        assert result.view_prompts["back"] == "a corgi" and result.protected == ["corgi"]
        assert result.table.pmi[2].tolist() == pytest.approx([1.0, 1.0])  # P(u) = 1 -> PMI = 1
    with pytest.raises(ConfigError, match="prompt_debiasing_mask_ids.*out of range"):
        debias_prompt("a corgi", DebiasSettings(**TWO_VIEWS, removable_word_indices=(2,)), TableScorer({}))


def test_a_view_prompt_keeps_a_content_word_or_stays_whole():
    # unprotected, "smiling" and "corgi" both contradict the back view: "a" alone is no prompt
    result = debias_prompt("a smiling corgi", DebiasSettings(**TWO_VIEWS), TableScorer(SMILING))
    assert result.table.dropped[1:, 1].tolist() == [True, True]  # the rule's verdict is recorded
    assert result.view_prompts == {"front": "a smiling corgi", "back": "a smiling corgi"}
    # `removed` is the rule's verdict for every view (threestudio would remove these words);
    # `kept_whole` says the view's prompt kept them anyway
    assert result.removed == {"front": [], "back": ["smiling", "corgi"]} and result.kept_whole == ["back"]
    # "the" + preposition only is no subject either
    scorer = TableScorer({"the on top": 0.5, "the corgi on": 0.5}, default=0.9)
    result = debias_prompt("the corgi on top", DebiasSettings(**TWO_VIEWS), scorer)
    assert result.view_prompts["back"] == "the corgi on top" and result.kept_whole == ["back"]


def test_removals_leave_no_double_article_or_dangling_punctuation():
    prompt = "a photo of a lion's face"
    # "photo" and "of" contradict the back view: threestudio would give "a a lion's face"
    scorer = TableScorer({prompt: 0.9, "a of a lion's face": 0.5, "a photo a lion's face": 0.5}, default=0.9)
    result = debias_prompt(prompt, DebiasSettings(**TWO_VIEWS), scorer)
    assert result.removed["back"] == ["photo", "of"]
    assert result.view_prompts["back"] == "a lion's face"
    # a separator left at the end by a removal is dropped, with either kind of word units
    for units in ("whitespace", "words"):
        prompt = "a corgi, smiling"
        without_smiling = "a corgi," if units == "whitespace" else "a corgi"
        scorer = TableScorer({prompt: 0.9, without_smiling: 0.5}, default=0.9)
        result = debias_prompt(prompt, DebiasSettings(**TWO_VIEWS, word_units=units), scorer)
        assert result.view_prompts["back"] == "a corgi", units
    assert remove_words("a corgi - smiling", [3]) == "a corgi"
    assert remove_words("a corgi with a hat", [3, 4]) == "a corgi with"  # (the article rule is in the rebuild)


def test_whitespace_words_are_threestudios_words():
    prompt = "A Smiling Corgi, wearing a top-hat."
    words = split_words(prompt)
    assert [w.text for w in words] == prompt.split(" ")
    assert [w.key for w in words] == ["a", "smiling", "corgi", "wearing", "a", "top-hat"]
    scorer = TableScorer({}, default=0.6)
    debias_prompt(prompt, DebiasSettings(**TWO_VIEWS), scorer)
    words = prompt.split(" ")
    assert scorer.calls == [[prompt] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]]


def test_words_units_keep_punctuation_and_spelling():
    prompt = "A Smiling Corgi, wearing a top-hat, DSLR photo."
    words = split_words(prompt, "words")
    assert [w.text for w in words] == ["A", "Smiling", "Corgi", "wearing", "a", "top-hat", "DSLR", "photo"]
    assert remove_words(prompt, [1], "words") == "A Corgi, wearing a top-hat, DSLR photo."
    assert remove_words(prompt, [3, 4, 5], "words") == "A Smiling Corgi, DSLR photo."
    assert remove_words("smiling, happy corgi", [0], "words") == "happy corgi"
    assert remove_words("a dog's (smiling) face", [2], "words") == "a dog's face"
    scorer = TableScorer({prompt: 0.9, remove_words(prompt, [1], "words"): 0.4}, default=0.9)
    result = debias_prompt(prompt, DebiasSettings(**TWO_VIEWS, word_units="words"), scorer)
    assert result.view_prompts == {"front": prompt, "back": "A Corgi, wearing a top-hat, DSLR photo."}


def test_all_variants_are_scored_in_one_batch():
    scorer = TableScorer(SMILING)
    debias_prompt("a smiling corgi", DebiasSettings(**TWO_VIEWS), scorer)
    assert scorer.calls == [["a smiling corgi", "smiling corgi", "a corgi", "a smiling"]]


def test_pmi_formula_and_bad_settings():
    pmi = pointwise_mutual_information(torch.tensor([[0.6, 0.4]]), torch.tensor([[0.2, 0.8]]), torch.tensor([0.5]))
    assert pmi.tolist()[0] == pytest.approx([1.5, 2 / 3])
    with pytest.raises(ConfigError, match="prompt.*must not be empty"):
        debias_prompt("  ", DebiasSettings(**TWO_VIEWS), TableScorer({}))
    with pytest.raises(ConfigError, match="protected_words.*not a word of the prompt"):
        debias_prompt("a corgi", DebiasSettings(**TWO_VIEWS, protected_words=("cat",)), TableScorer({}))
    with pytest.raises(ConfigError, match="pmi_normalization.*allowed values"):
        DebiasSettings(**TWO_VIEWS, normalization="softmax").validate()
    with pytest.raises(ConfigError, match="debias_word_units.*allowed values"):
        DebiasSettings(**TWO_VIEWS, word_units="chars").validate()
    with pytest.raises(ConfigError, match="debias_template.*MASK"):
        DebiasSettings(**TWO_VIEWS, template="no mask {prompt}").validate()


@pytest.mark.parametrize("template", [
    "This image is depicting a [MASK] view of {prompt} in {style}",
    "This image is depicting a [MASK] view of {}",
    "This image is depicting a [MASK] view of {prompt} {prompt}",
    "This image {is depicting a [MASK] view of {prompt}",
])
def test_template_fields_other_than_prompt_are_config_errors(template):
    with pytest.raises(ConfigError, match="debias_template"):
        DebiasSettings(**TWO_VIEWS, template=template).validate()
    DebiasSettings(**TWO_VIEWS, template="{{literal}} a [MASK] view of {prompt}").validate()


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
    assert second.view_prompts == first.view_prompts and second.kept_whole == first.kept_whole
    assert torch.allclose(second.table.pmi, first.table.pmi)
    # anything that affects the result changes the key
    for other in (DebiasSettings(**TWO_VIEWS, protected_words=("corgi",), threshold=0.9),
                  DebiasSettings(**TWO_VIEWS, protected_words=("corgi",), word_units="words")):
        _, path3, hit3 = cached_debias("a smiling corgi", other, "bert-x", str(tmp_path), make_scorer)
        assert not hit3 and path3 != path
    assert built == [1, 1, 1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # atomic: no leftovers


# --- the default rule against threestudio's get_debiased_prompt, on a masked LM whose rules fire ---

PEAKY_TIES = {"smiling": "front", "face": "front", "tail": "back", "hat": "overhead", "wearing": "side"}
PEAKY_WORDS = "this image is depicting a view of corgi with fluffy photo the dog".split()
PEAKY_PROMPTS = [
    "a smiling corgi",
    "a smiling corgi with a fluffy tail, wearing a hat.",
    "A photo of the Smiling dog's face",
    "a corgi wearing a hat",
]


@pytest.fixture(scope="module")
def peaky_bert(tmp_path_factory):
    from antijanus.testing.tiny_models import make_bert

    return make_bert(str(tmp_path_factory.mktemp("peaky-bert")), PEAKY_WORDS, view_ties=PEAKY_TIES)


def threestudio_rule_transcribed(folder, prompt, threshold=0.95):
    """My own transcription, for this test, of the rule threestudio 28d9d80 publishes as
    ``PromptProcessor.get_debiased_prompt``: the view words are the four direction names (the
    first four word pieces after [CLS] of "side front back overhead"); each sentence is padded to
    the tokenizer's 512 tokens and run alone; P(views) is the softmax over the vocabulary at the
    one [MASK], renormalised over the four view ids; a word (``prompt.split(" ")``) leaves view i
    when full_i / (0.5 part_i + 0.5 full_i) < 0.95, part = the prompt without it re-joined with
    spaces. Returns {view: removed words} and {view: the remaining words joined by spaces}."""
    from transformers import BertForMaskedLM, BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(folder)
    model = BertForMaskedLM.from_pretrained(folder).eval()
    view_ids = tokenizer(" ".join(NAMES), return_tensors="pt").input_ids[0][1:5]

    def distribution(text):
        batch = tokenizer(f"This image is depicting a [MASK] view of {text}", padding="max_length",
                          truncation=True, return_tensors="pt")
        assert batch.input_ids.shape[1] == 512
        position = int((batch.input_ids[0] == tokenizer.mask_token_id).nonzero()[0])
        with torch.no_grad():
            p = model(**batch).logits[0, position].softmax(-1)[view_ids]
        return p / p.sum()

    words = prompt.split(" ")
    full = distribution(prompt)
    gone = {name: set() for name in NAMES}
    for i in range(len(words)):
        part = distribution(" ".join(words[:i] + words[i + 1:]))
        pmi = full / (0.5 * part + 0.5 * full)
        for k, name in enumerate(NAMES):
            if pmi[k].item() < threshold:
                gone[name].add(i)
    removed = {n: [words[i] for i in sorted(gone[n])] for n in NAMES}
    joined = {n: " ".join(w for i, w in enumerate(words) if i not in gone[n]) for n in NAMES}
    return removed, joined


def dangles(text):
    """A separator at the end, or an article before another article or at the end."""
    words = text.lower().split()
    articles = ("a", "an", "the")
    return text.endswith((",", ";", ":")) or words[-1] in articles or any(
        w in articles and n in articles for w, n in zip(words, words[1:]))


def test_default_rule_and_view_words_reproduce_threestudio(peaky_bert):
    from antijanus.prompting.mlm import MaskedLMViewScorer

    scorer = MaskedLMViewScorer(peaky_bert)
    settings = DebiasSettings()  # the defaults
    assert settings.views == NAMES and settings.view_words == NAMES and settings.normalization == "none"
    differs_from_mean = fired = 0
    for prompt in PEAKY_PROMPTS:
        expected_removed, expected_prompts = threestudio_rule_transcribed(peaky_bert, prompt)
        result = debias_prompt(prompt, settings, scorer)
        assert result.removed == expected_removed, prompt
        assert result.kept_whole == []
        for view in NAMES:  # where no article or separator dangles, the prompts are the same text
            if not dangles(expected_prompts[view]):
                assert result.view_prompts[view] == expected_prompts[view], (prompt, view)
            else:
                assert not dangles(result.view_prompts[view]), (prompt, view)
        fired += sum(bool(words) for words in expected_removed.values())
        mean = debias_prompt(prompt, DebiasSettings(normalization="mean"), scorer)
        differs_from_mean += mean.removed != expected_removed
    # the rules really fire on this model, and the test tells the rules apart
    assert fired >= 8 and differs_from_mean >= 1


def test_real_bert_classes_end_to_end(tmp_path_factory):
    from antijanus.prompting.mlm import MaskedLMViewScorer
    from antijanus.testing.tiny_models import make_bert

    words = "this image is depicting a view of smiling corgi up ##side".split()
    scorer = MaskedLMViewScorer(make_bert(str(tmp_path_factory.mktemp("tiny-bert")), words))
    forward_calls = []
    encoder = scorer.model.base_model
    encoder_forward = encoder.forward
    encoder.forward = lambda *a, **k: (forward_calls.append(k.get("input_ids", a[0] if a else None).shape),
                                       encoder_forward(*a, **k))[1]
    original = scorer.model.forward  # the full model, for the reference computation below
    view_words = ("front", "side", "back", "upside")
    assert [len(p) for p in scorer.view_pieces(view_words)] == [1, 1, 1, 2]  # up + ##side
    prompts = ["a smiling corgi", "a corgi"]
    probs = scorer.view_probabilities(prompts, view_words)
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
                            log_p(one, [vocab("back")]), log_p(two, [vocab("up"), vocab("##side")])])
    assert torch.allclose(probs[1], torch.softmax(logs, 0), atol=1e-5)

    settings = DebiasSettings(views=view_words, view_words=view_words, protected_words=("corgi",))
    result = debias_prompt("A smiling Corgi.", settings, scorer)
    assert set(result.view_prompts) == {"front", "side", "back", "upside"}
    for view, text in result.view_prompts.items():
        assert text.endswith("Corgi.")  # protected, original case and punctuation kept


def test_missing_or_wrong_model_folders_are_config_errors(tmp_path, tiny_sd):
    from antijanus.prompting.mlm import MaskedLMViewScorer

    with pytest.raises(ConfigError, match="debias_model.*does not exist"):
        MaskedLMViewScorer("/no/such/bert")
    with pytest.raises(ConfigError, match="debias_model.*not a masked language model folder"):
        MaskedLMViewScorer(tiny_sd)  # a Stable Diffusion folder
    with pytest.raises(ConfigError, match="debias_model.*could not be loaded as a masked language model"):
        MaskedLMViewScorer(f"{tiny_sd}/text_encoder")  # a CLIP text encoder: no tokenizer, not an MLM
    with pytest.raises(ConfigError, match="debias_model.*model hub.*no network"):
        MaskedLMViewScorer("no-such-org/no-such-bert")  # HF_HUB_OFFLINE=1 in the tests
