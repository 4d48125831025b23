"""View prompts that fit the text encoder.

A view prompt is the user's prompt (debiased or not) with a view phrase, e.g.
"<prompt>, side view". CLIP and IF's T5 read at most 77 tokens and truncate the rest, so for a
long prompt the view phrase, which comes last, would be cut away and every view would get the
same embedding: Perp-Neg and prompt debiasing would silently do nothing. ``fit_view_prompt``
shortens the user's part instead (whole words from the end) until the view prompt fits.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from ..utils.errors import ConfigError
from .debias import FUNCTION_WORDS


def comma_phrase(phrase: str) -> Callable[[str], str]:
    """threestudio's view-prompt form: "<prompt>, <phrase>"."""
    return lambda text: f"{text}, {phrase}"


def check_room_for_words(words: Sequence[str], make_prompt: Callable[[str], str],
                         count_tokens: Callable[[str], int], max_tokens: int, key: str = "view_phrases") -> None:
    """A configuration error when the view phrase leaves no room for one of ``words`` alone.

    Debiasing removes whole words, so any word of the prompt may come first in a view prompt,
    and ``fit_view_prompt`` keeps at least the first word: with every word fitting alone it
    always succeeds. Checked with the tokenizer only, before any model loads."""
    for word in words:
        if count_tokens(make_prompt(word)) > max_tokens:
            raise ConfigError(key, make_prompt(""), f"with the prompt's word {word!r} alone the view prompt is "
                              f"{count_tokens(make_prompt(word))} tokens: the view phrase leaves no room for the "
                              f"prompt in the text encoder's {max_tokens} tokens; use a shorter phrase or prompt word")


def fit_view_prompt(user_part: str, make_prompt: Callable[[str], str], count_tokens: Callable[[str], int],
                    max_tokens: int, key: str = "view_phrases") -> Tuple[str, Optional[str]]:
    """(view prompt, shortened user part or None when it fits as it is).

    ``count_tokens`` counts with the encoder's special tokens; the longest prefix of whole words
    of ``user_part`` whose view prompt fits in ``max_tokens`` is kept (the count grows with the
    prefix, so a binary search finds it)."""
    prompt = make_prompt(user_part)
    if count_tokens(prompt) <= max_tokens:
        return prompt, None
    words = user_part.split()
    low, high = 0, len(words) - 1  # invariant: words[:low] fits (or low = 0), words[:high + 1] does not
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(make_prompt(_join(words[:middle]))) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    if low == 0:
        raise ConfigError(key, make_prompt(""), f"the view phrase leaves no room for the prompt in the text "
                          f"encoder's {max_tokens} tokens; use a shorter phrase")
    shortened = _join(words[:low])
    return make_prompt(shortened), shortened


def _join(words) -> str:
    return " ".join(words).rstrip(",;:&-")


_WORDS = re.compile(r"\w+", re.UNICODE)
VIEW_FILLERS = frozenset({"view", "views", "side", "sides", "front", "back", "backside", "top", "overhead"})


def phrase_words(phrases: Iterable[str]) -> frozenset:
    """The lower-case words of the view phrases, with the usual view words ('view', 'front', ...)."""
    return VIEW_FILLERS | frozenset(w.lower() for phrase in phrases for w in _WORDS.findall(phrase))


def subject_words(prompt: str, phrases: Iterable[str]) -> List[str]:
    """The prompt's words that say what the object is: neither a view word nor a function word
    ('a', 'of', ...). None left: the prompt only names views, there is nothing to train on."""
    views = phrase_words(phrases)
    return [w for w in _WORDS.findall(prompt) if w.lower() not in views and w.lower() not in FUNCTION_WORDS]


def view_phrases_in(prompt: str, phrases: Iterable[str]) -> List[str]:
    """The view phrases ('back view') the prompt itself contains, as whole words, any case: each
    view's prompt then names that view too ('<prompt>, front view' says 'back view' as well)."""
    text = " ".join(_WORDS.findall(prompt.lower()))
    found = []
    for phrase in phrases:
        words = " ".join(_WORDS.findall(phrase.lower()))
        if words and re.search(rf"(?<!\w){re.escape(words)}(?!\w)", text) and phrase not in found:
            found.append(phrase)
    return found
