"""D-SDS prompt debiasing with BERT point-wise mutual information (arXiv 2303.15413, Sec. 4.2,
Eq. 14 and appendix C.3; docs/algorithms.md section 2b).

For a word u of the user prompt and a view v (e.g. "smiling" and "back"):

    P(v | u)  masked-LM probability of the view word at the [MASK] of
              "This image is depicting a [MASK] view of <prompt>", normalised over the views;
              u = the prompt with the word, not-u = the prompt without it
    P(v)      = P(v | u) P(u) + P(v | not u) (1 - P(u)),   P(u) = 1/2, or 1 for protected words
    PMI(v, u) = P(v | u) / P(v)

Decision rules (``normalization``):

    "none"  drop u from view v when PMI(v, u) < threshold (0.95). This is the implementation the
            D-SDS authors point to, threestudio's ``PromptProcessor.get_debiased_prompt``
            (28d9d80): its ``full / lerp(part, full, 0.5)`` is the PMI above with P(u) = 1/2, its
            view words are the direction names "side front back overhead" and its words are
            ``prompt.split(" ")``. The default.
    "mean"  drop when PMI(v, u) < 1 and PMI(v, u) / mean_v' PMI(v', u) < threshold: the paper's
            "normalised across all views", read as division by the mean. Option.
    "max"   as "mean", divided by the best view's PMI (stricter). Option.

A protected word has P(u) = 1, hence PMI = 1 for every view, and is never dropped.

Words (``word_units``): "whitespace" (default) takes threestudio's words, the prompt split at
spaces: a word carries its punctuation ("corgi,") and the prompt-minus-word sentences scored by
the LM are the remaining words joined by single spaces, exactly as threestudio builds them.
"words" takes letters/digits with inner apostrophes and hyphens as words and leaves punctuation
in the prompt when a word is removed ("a smiling corgi, wearing a hat" minus "corgi" is
"a smiling, wearing a hat", for the LM and in the view prompt). The two differ only for prompts
with punctuation or symbols; see README.

Rebuilding a view prompt (both unit kinds; threestudio only joins the kept words): an article
left directly before another article or at the end is dropped ("a photo of a lion's face"
minus "photo of" -> "a lion's face", not "a a lion's face"), separators left dangling are
dropped, and a view whose prompt would keep no content word (only articles, prepositions, ...)
keeps the whole prompt ("a smiling corgi" never becomes "a").

View words made of several word pieces are scored with as many [MASK] tokens as pieces, as the
product of the pieces' probabilities (threestudio would score only the first piece; the default
view words are single bert-base-uncased tokens, so the two agree). All sentences go through the
masked LM in one batched forward pass with dynamic padding.
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Protocol, Sequence, Set, Tuple

import torch
from torch import Tensor

from ..utils.cache import cache_key, invalid_content, read_json, write_json
from ..utils.errors import ConfigError, require_choice, require_finite

DEFAULT_TEMPLATE = "This image is depicting a [MASK] view of {prompt}"
NORMALIZATIONS = ("none", "mean", "max")
WORD_UNITS = ("whitespace", "words")
# threestudio's direction names, scored as the view words by get_debiased_prompt
DEFAULT_VIEWS = ("side", "front", "back", "overhead")
RULES_VERSION = 3  # part of the cache key: bump when the rule or the rebuilding changes

ARTICLES = frozenset({"a", "an", "the"})
# Words that alone do not make a subject: a view prompt must keep at least one other word.
FUNCTION_WORDS = ARTICLES | frozenset("""
    of in on at with by for from to into onto over under near behind beside between above below
    through across around against along about as and or but nor so yet than then
    is are was were be been being has have had do does did
    it its this that these those his her hers their theirs our ours my your yours him them
    very some any each every no not""".split())

_WORD = re.compile(r"\w+(?:['\u2019\-]\w+)*", re.UNICODE)
_NON_SPACE = re.compile(r"\S+")
_EDGE_PUNCTUATION = re.compile(r"^\W+|\W+$", re.UNICODE)


@dataclass(frozen=True)
class Word:
    index: int
    text: str
    start: int
    end: int

    @property
    def key(self) -> str:
        """Lower case without surrounding punctuation ("Corgi," -> "corgi"), for matching."""
        return _EDGE_PUNCTUATION.sub("", self.text).lower()

    @property
    def is_content(self) -> bool:
        return bool(self.key) and self.key not in FUNCTION_WORDS


def split_words(prompt: str, units: str = "whitespace") -> List[Word]:
    """The words of a prompt: "whitespace" = threestudio's ``prompt.split(" ")`` (runs of
    whitespace count as one separator), "words" = letters/digits with inner ' and -."""
    require_choice("debias_word_units", units, WORD_UNITS)
    pattern = _NON_SPACE if units == "whitespace" else _WORD
    return [Word(i, m.group(0), m.start(), m.end()) for i, m in enumerate(pattern.finditer(prompt))]


def sentence_without(prompt: str, words: Sequence[Word], index: int, units: str = "whitespace") -> str:
    """The not-u sentence scored by the masked LM: threestudio's join of the other words
    ("whitespace"), or the prompt with the word cut out and tidied ("words")."""
    if units == "whitespace":
        return " ".join(w.text for w in words if w.index != index)
    return remove_words(prompt, [index], units)


def remove_words(prompt: str, remove: Sequence[int], units: str = "whitespace") -> str:
    """The prompt without the words at the given indices, original spelling and punctuation of
    the kept text preserved; whitespace is tidied and a separator left dangling is dropped."""
    words = split_words(prompt, units)
    drop = set(remove)
    pieces: List[str] = []
    cursor = 0
    for word in words:
        pieces.append(prompt[cursor:word.start])
        if word.index not in drop:
            pieces.append(word.text)
        cursor = word.end
    pieces.append(prompt[cursor:])
    text = re.sub(r"\s+", " ", "".join(pieces))
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)  # no space before punctuation
    text = re.sub(r"([,;:&\-])(\s*[,;:&\-])+", r"\1", text)  # ", ," -> ","
    text = re.sub(r"^[\s,;:&\-]+|[\s,;:&\-]+$", "", text)  # no leading/trailing separators
    text = re.sub(r"\(\s*\)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def dangling_articles(words: Sequence[Word], drop: Set[int]) -> Set[int]:
    """Articles a removal leaves directly before another article or at the end of the prompt."""
    kept = [w for w in words if w.index not in drop]
    extra = set()
    for position, word in enumerate(kept):
        if word.key not in ARTICLES or word.text[-1:] in ",;:":
            continue
        following = kept[position + 1] if position + 1 < len(kept) else None
        if following is None or following.key in ARTICLES:
            extra.add(word.index)
    return extra


def rebuild_view_prompt(prompt: str, words: Sequence[Word], drop: Set[int], units: str) -> Optional[str]:
    """The view prompt without the dropped words (tidied), or None when it would keep no
    content word (the caller then keeps the whole prompt)."""
    if not drop:
        return prompt
    drop = set(drop) | dangling_articles(words, drop)
    if not any(w.is_content for w in words if w.index not in drop):
        return None
    return remove_words(prompt, sorted(drop), units)


class ViewScorer(Protocol):
    """Masked-LM view probabilities: P(v | sentence) normalised over the given view words."""
    def view_probabilities(self, prompts: Sequence[str], view_words: Sequence[str]) -> Tensor:
        """[len(prompts), len(view_words)], rows sum to 1."""


@dataclass
class PMITable:
    words: List[str]
    views: List[str]
    p_with: Tensor  # [W, V] P(v | u)
    p_without: Tensor  # [W, V] P(v | not u)
    p_u: Tensor  # [W]
    pmi: Tensor  # [W, V]
    normalized: Tensor  # [W, V] (equal to pmi for the "none" rule)
    dropped: Tensor  # [W, V] bool: the rule's verdict

    def as_dict(self) -> Dict:
        return {
            "words": self.words,
            "views": self.views,
            "p_u": [round(float(x), 6) for x in self.p_u],
            "p_view_given_word": _rows(self.p_with),
            "p_view_given_no_word": _rows(self.p_without),
            "pmi": _rows(self.pmi),
            "normalized_pmi": _rows(self.normalized),
            "dropped": [[bool(x) for x in row] for row in self.dropped.tolist()],
        }

    def format(self) -> str:
        """The word x view table, one line per word."""
        width = max([len(w) for w in self.words] + [4])
        lines = [" " * (width + 2) + "".join(f"{v:>16}" for v in self.views)]
        for i, word in enumerate(self.words):
            cells = []
            for j in range(len(self.views)):
                mark = " x" if self.dropped[i, j] else "  "
                cells.append(f"{float(self.pmi[i, j]):>7.3f} ({float(self.normalized[i, j]):.3f}){mark}"[-16:].rjust(16))
            lines.append(f"{word:<{width}}  " + "".join(cells))
        lines.append("PMI (normalised PMI); x = contradicts that view (the rule drops it)")
        return "\n".join(lines)


def _rows(t: Tensor) -> List[List[float]]:
    return [[round(float(x), 6) for x in row] for row in t.tolist()]


def pointwise_mutual_information(p_with: Tensor, p_without: Tensor, p_u: Tensor) -> Tensor:
    """Eq. 14: PMI(v, u) = P(v|u) / (P(v|u) P(u) + P(v|not u) (1 - P(u))), per word and view."""
    p_u = p_u.view(-1, 1)
    p_v = p_with * p_u + p_without * (1.0 - p_u)
    return p_with / p_v.clamp_min(torch.finfo(p_v.dtype).tiny)


def normalize_pmi(pmi: Tensor, normalization: str) -> Tensor:
    if normalization == "mean":
        return pmi / pmi.mean(dim=1, keepdim=True)
    if normalization == "max":
        return pmi / pmi.max(dim=1, keepdim=True).values
    if normalization == "none":
        return pmi
    raise ConfigError("pmi_normalization", normalization, "unknown normalisation", NORMALIZATIONS)


def contradiction_mask(pmi: Tensor, normalized: Tensor, threshold: float, normalization: str) -> Tensor:
    """(word, view) pairs to drop. "none": PMI < threshold (threestudio's get_debiased_prompt);
    "mean"/"max": PMI < 1 and normalised PMI < threshold (appendix C.3, normalised)."""
    if normalization == "none":
        return pmi < threshold
    return (pmi < 1.0) & (normalized < threshold)


def template_problem(template: str) -> Optional[str]:
    """Why a debiasing template cannot be used, or None: exactly one [MASK] and the one field
    {prompt} (literal braces as {{ }})."""
    if template.count("[MASK]") != 1:
        return "must contain exactly one [MASK] (where the view word is scored)"
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        return f"is not a valid format string ({error}); write literal braces as {{{{ }}}}"
    if fields != ["prompt"]:
        return (f"must contain the field {{prompt}} exactly once and no other field (found "
                f"{['{' + f + '}' for f in fields]}); write literal braces as {{{{ }}}}")
    return None


@dataclass(frozen=True)
class DebiasSettings:
    views: Tuple[str, ...] = DEFAULT_VIEWS  # prompt-processor direction names
    view_words: Tuple[str, ...] = DEFAULT_VIEWS  # words scored by the LM (threestudio: the names)
    threshold: float = 0.95
    protected_words: Tuple[str, ...] = ()
    protected_word_indices: Tuple[int, ...] = ()
    removable_word_indices: Optional[Tuple[int, ...]] = None  # threestudio's prompt_debiasing_mask_ids
    p_word: float = 0.5
    normalization: str = "none"
    word_units: str = "whitespace"
    template: str = DEFAULT_TEMPLATE

    def validate(self) -> "DebiasSettings":
        if len(self.views) != len(self.view_words) or len(self.views) < 2:
            raise ConfigError("pmi_view_words", list(self.view_words),
                              f"needs one word for each of the views {list(self.views)} (>= 2 views)")
        for word in self.view_words:
            if not word or not word.strip():
                raise ConfigError("pmi_view_words", list(self.view_words), "view words must not be empty")
        require_finite("debias_threshold", self.threshold)
        if not 0.0 < self.threshold:
            raise ConfigError("debias_threshold", self.threshold, "must be > 0")
        if not 0.0 < require_finite("debias_p_word", self.p_word) < 1.0:
            raise ConfigError("debias_p_word", self.p_word, "must lie in (0, 1)")
        require_choice("pmi_normalization", self.normalization, NORMALIZATIONS)
        require_choice("debias_word_units", self.word_units, WORD_UNITS)
        problem = template_problem(self.template)
        if problem:
            raise ConfigError("debias_template", self.template, problem)
        return self


def threshold_problem(settings: DebiasSettings) -> Optional[str]:
    """Why ``debias_threshold`` lies where it cannot act as a threshold, with the reachable
    range, or None. With P(u) = p: PMI = P(v|u) / (p P(v|u) + (1 - p) P(v|not u)) < 1/p, so under
    the "none" rule a threshold >= 1/p drops every unprotected word from every view; normalised by
    the best view ("max") PMI is at most 1, by the mean ("mean") at most the number of views, so a
    threshold above those leaves only the rule's PMI < 1."""
    t = settings.threshold
    if settings.normalization == "none":
        top = 1.0 / settings.p_word
        if t >= top:
            return (f"PMI with P(u) = debias_p_word = {settings.p_word:g} is always below 1/P(u) = {top:g}, so every "
                    "word that is not protected contradicts every view: each view loses all of them, or keeps "
                    f"the whole prompt when nothing would be left, and debiasing does nothing useful; the "
                    f"reachable range is (0, {top:g}) (default 0.95)")
        return None
    top = 1.0 if settings.normalization == "max" else float(len(settings.views))
    if t > top:
        return (f"the PMI normalised by the {settings.normalization} over the views is at most {top:g}, so the "
                f"threshold no longer acts (every word with PMI < 1 is dropped); the reachable range is "
                f"(0, {top:g}] (default 0.95)")
    return None


@dataclass
class DebiasResult:
    prompt: str
    view_prompts: Dict[str, str]  # view name -> prompt with the contradicting words removed
    # view name -> the words the rule finds contradicting the view (threestudio would remove
    # exactly these); the view's prompt lacks them unless the view is in ``kept_whole``
    removed: Dict[str, List[str]]
    table: Optional[PMITable]
    protected: List[str] = field(default_factory=list)
    kept_whole: List[str] = field(default_factory=list)  # views whose removals would leave no content word

    def as_dict(self) -> Dict:
        return {
            "prompt": self.prompt,
            "view_prompts": self.view_prompts,
            "removed": self.removed,
            "protected": self.protected,
            "kept_whole": self.kept_whole,
            "table": None if self.table is None else self.table.as_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "DebiasResult":
        table = None
        if data.get("table"):
            t = data["table"]
            table = PMITable(
                words=list(t["words"]), views=list(t["views"]),
                p_with=torch.tensor(t["p_view_given_word"]),
                p_without=torch.tensor(t["p_view_given_no_word"]),
                p_u=torch.tensor(t["p_u"]), pmi=torch.tensor(t["pmi"]),
                normalized=torch.tensor(t["normalized_pmi"]), dropped=torch.tensor(t["dropped"]),
            )
        return cls(data["prompt"], dict(data["view_prompts"]), {k: list(v) for k, v in data["removed"].items()},
                   table, list(data.get("protected", [])), list(data.get("kept_whole", [])))


def protected_indices(words: Sequence[Word], settings: DebiasSettings, key: str = "protected_words") -> List[int]:
    """Indices of protected words: by text (case and surrounding punctuation ignored), by index,
    and every word outside ``removable_word_indices`` when that is given."""
    keys = [w.key for w in words]
    indices = set()
    for text in settings.protected_words:
        wanted = [w.key for w in split_words(text, settings.word_units) if w.key]
        if not wanted:
            raise ConfigError(key, text, "a protected word must contain a word")
        found = False
        for start in range(len(keys) - len(wanted) + 1):
            if keys[start:start + len(wanted)] == wanted:
                indices.update(range(start, start + len(wanted)))
                found = True
        if not found:
            raise ConfigError(key, text, f"is not a word of the prompt; its words are {[w.text for w in words]}")
    for index_key, values in (("protected_word_indices", settings.protected_word_indices),
                              ("prompt_debiasing_mask_ids", settings.removable_word_indices or ())):
        for index in values:
            if not 0 <= index < len(words):
                raise ConfigError(index_key, index, f"out of range: the prompt has {len(words)} words "
                                  f"(0-based) {[w.text for w in words]}")
    indices.update(settings.protected_word_indices)
    if settings.removable_word_indices is not None:
        indices.update(set(range(len(words))) - set(settings.removable_word_indices))
    return sorted(indices)


def debias_prompt(prompt: str, settings: DebiasSettings, scorer: ViewScorer) -> DebiasResult:
    """Per-view prompts with the words that contradict each view removed (one batched LM pass)."""
    settings.validate()
    if not prompt or not prompt.strip():
        raise ConfigError("prompt", prompt, "must not be empty")
    units = settings.word_units
    words = split_words(prompt, units)
    protected = protected_indices(words, settings)
    if not words:
        return DebiasResult(prompt, {v: prompt for v in settings.views}, {v: [] for v in settings.views}, None)
    sentences = [prompt] + [sentence_without(prompt, words, w.index, units) for w in words]
    probabilities = scorer.view_probabilities(sentences, settings.view_words).double()
    p_with = probabilities[:1].expand(len(words), -1)
    p_without = probabilities[1:]
    p_u = torch.full((len(words),), settings.p_word, dtype=torch.float64)
    p_u[protected] = 1.0
    pmi = pointwise_mutual_information(p_with, p_without, p_u)
    normalized = normalize_pmi(pmi, settings.normalization)
    dropped = contradiction_mask(pmi, normalized, settings.threshold, settings.normalization)
    dropped[protected] = False
    table = PMITable([w.text for w in words], list(settings.views), p_with.float(), p_without.float(),
                     p_u.float(), pmi.float(), normalized.float(), dropped)
    view_prompts, removed, kept_whole = {}, {}, []
    for j, view in enumerate(settings.views):
        drop = {w.index for w in words if dropped[w.index, j]}
        text = rebuild_view_prompt(prompt, words, drop, units)
        if text is None:  # no content word would be left: keep the whole prompt for this view
            kept_whole.append(view)
            text = prompt
        view_prompts[view] = text
        removed[view] = [words[i].text for i in sorted(drop)]  # the rule's words, also when kept whole
    return DebiasResult(prompt, view_prompts, removed, table, [words[i].text for i in protected], kept_whole)


def cached_debias(prompt: str, settings: DebiasSettings, model_name: str, cache_dir: str,
                  make_scorer, use_cache: bool = True) -> Tuple[DebiasResult, str, bool]:
    """``debias_prompt`` through an on-disk JSON cache keyed by everything that affects the
    result (model, prompt, all settings, the rules' version). The scorer is built only on a
    miss. Returns (result, cache path, hit)."""


    settings.validate()
    if not prompt or not prompt.strip():
        raise ConfigError("prompt", prompt, "must not be empty")
    protected_indices(split_words(prompt, settings.word_units), settings)  # config errors before any model loads
    key = cache_key(kind="bert-pmi-debias", rules=RULES_VERSION, model=model_name, prompt=prompt,
                    settings=dataclasses.asdict(settings))
    path = os.path.join(cache_dir, f"{key}.json")
    data = read_json(path) if use_cache else None
    if data is not None:
        problem = cached_result_problem(data, prompt, settings, model_name)
        if problem is None:
            return DebiasResult.from_dict(data), path, True
        invalid_content(path, problem)
    result = debias_prompt(prompt, settings, make_scorer())
    write_json(path, {**result.as_dict(), "model": model_name})
    return result, path, False


def cached_result_problem(data: Mapping, prompt: str, settings: DebiasSettings, model_name: str) -> Optional[str]:
    """Why a cached debiasing result cannot be used (a key missing, another prompt, model or set
    of views, a malformed PMI table), or None."""
    missing = [key for key in ("prompt", "view_prompts", "removed") if key not in data]
    if missing:
        return f"the key {missing[0]!r} is missing"
    if data["prompt"] != prompt:
        return f"it is the result of another prompt ({str(data['prompt'])[:60]!r})"
    if data.get("model", model_name) != model_name:
        return f"it is the result of another masked LM ({data['model']!r})"
    views = set(settings.views)
    for key in ("view_prompts", "removed"):
        if not isinstance(data[key], Mapping) or set(data[key]) != views:
            return f"{key!r} does not hold one entry per view {sorted(views)}"
    if not all(isinstance(text, str) and text.strip() for text in data["view_prompts"].values()):
        return "a view prompt is not a non-empty string"
    if not all(isinstance(words, list) for words in data["removed"].values()):
        return "'removed' does not hold a list of words per view"
    if not set(data.get("kept_whole", [])) <= views:
        return "'kept_whole' names a view that does not exist"
    return table_problem(data.get("table"), list(settings.views))


def table_problem(table: Optional[Mapping], views: List[str]) -> Optional[str]:
    """Why a cached PMI table is malformed (keys, view order, a [words x views] shape), or None."""
    if table is None:
        return None
    try:
        words = len(table["words"])
        matrices = [torch.tensor(table[key], dtype=torch.float64) for key in
                    ("p_view_given_word", "p_view_given_no_word", "pmi", "normalized_pmi", "dropped")]
        p_u = torch.tensor(table["p_u"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        return f"the PMI table is malformed ({type(error).__name__}: {str(error)[:80]})"
    if list(table.get("views", [])) != views:
        return f"the PMI table's views are {table.get('views')}, not {views}"
    if any(tuple(m.shape) != (words, len(views)) for m in matrices) or tuple(p_u.shape) != (words,):
        return f"the PMI table is not {words} words x {len(views)} views"
    return None
