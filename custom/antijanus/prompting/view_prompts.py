"""View prompts that fit the text encoder.

A view prompt is the user's prompt (debiased or not) with a view phrase, e.g.
"<prompt>, side view". CLIP and IF's T5 read at most 77 tokens and truncate the rest, so for a
long prompt the view phrase, which comes last, would be cut away and every view would get the
same embedding: Perp-Neg and prompt debiasing would silently do nothing. ``fit_view_prompt``
shortens the user's part instead (whole words from the end) until the view prompt fits.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

from ..utils.errors import ConfigError


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
