"""View prompts that fit the text encoder (prompting/view_prompts.py): the longest prefix of whole
words whose view prompt fits, and configuration errors naming the key when nothing fits. Tokens
are counted here as words + 2 (start and end tokens), as an encoder's tokenizer would."""

import pytest

from antijanus.prompting.view_prompts import check_room_for_words, comma_phrase, fit_view_prompt
from antijanus.utils.errors import ConfigError


def count_tokens(text):
    return len(text.replace(",", " ,").split()) + 2


SIDE = comma_phrase("side view")


def test_comma_phrase_is_threestudios_view_prompt_form():
    assert SIDE("a corgi") == "a corgi, side view"


def test_a_prompt_that_fits_is_kept_as_it_is():
    assert fit_view_prompt("a corgi", SIDE, count_tokens, max_tokens=77) == ("a corgi, side view", None)


@pytest.mark.parametrize("max_tokens", [7, 8, 9, 12])
def test_a_long_prompt_keeps_the_longest_prefix_of_whole_words_that_fits(max_tokens):
    user = "a photo of a corgi wearing a red hat on a beach"
    prompt, shortened = fit_view_prompt(user, SIDE, count_tokens, max_tokens)
    words = user.split()
    kept = len(shortened.split())
    assert prompt == SIDE(shortened) and shortened == " ".join(words[:kept])
    assert count_tokens(prompt) <= max_tokens < count_tokens(SIDE(" ".join(words[:kept + 1])))
    assert prompt.endswith(", side view")  # the view phrase always survives


def test_shortening_drops_punctuation_left_dangling_at_the_cut():
    prompt, shortened = fit_view_prompt("a corgi, wearing a hat", SIDE, count_tokens, max_tokens=7)
    assert (prompt, shortened) == ("a corgi, side view", "a corgi")


def test_a_view_phrase_without_room_is_a_config_error_naming_the_key():
    long_phrase = comma_phrase("seen from the left side of the object")
    message = "`view_phrases` = ', seen from the left.*leaves no room.*10 tokens"
    with pytest.raises(ConfigError, match=message):
        fit_view_prompt("a corgi on a beach", long_phrase, count_tokens, max_tokens=10)
    with pytest.raises(ConfigError, match="`prompt_processor.view_phrases`"):
        fit_view_prompt("a corgi on a beach", long_phrase, count_tokens, 10,
                        key="prompt_processor.view_phrases")


def test_room_for_every_word_alone_is_checked_before_any_model_loads():
    def subword_tokens(text):  # a long word is several tokens, as with BPE: chihuahua = 3
        return sum(-(-len(word) // 4) for word in text.replace(",", " ,").split()) + 2

    words = ["a", "chihuahua"]
    check_room_for_words(words, SIDE, subword_tokens, max_tokens=8)  # "chihuahua, side view": 8
    with pytest.raises(ConfigError, match="`view_phrases` = ', side view'.*word 'chihuahua' alone the "
                                          "view prompt is 8 tokens.*7 tokens"):
        check_room_for_words(words, SIDE, subword_tokens, max_tokens=7)  # "a, side view" (6) fits
