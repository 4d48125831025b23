"""D-SDS prompt debiasing with BERT point-wise mutual information (arXiv 2303.15413, Sec. 4.2,
Eq. 14 and appendix C.3; ALGORITHMS.md section 2b).

For a word u of the user prompt and a view v (e.g. "smiling" and "back"):

    P(v | u)  masked-LM probability of the view word at the [MASK] of
              "This image is depicting a [MASK] view of <prompt>", normalised over the views;
              u = the prompt with the word, not-u = the prompt without it
    P(v)      = P(v | u) P(u) + P(v | not u) (1 - P(u)),   P(u) = 1/2, or 1 for protected words
    PMI(v, u) = P(v | u) / P(v)

Appendix C.3: take the (v, u) pairs with PMI < 1, then drop u from view v's prompt when its PMI
for v, normalised across all views, is below 0.95. We normalise by the mean over views
(``normalization="mean"``: PMI(v,u) / mean_v' PMI(v',u), a scale on which 0.95 is meaningful);
``"max"`` divides by the best view's PMI; ``"none"`` compares the raw PMI with the threshold
(threestudio's ``use_prompt_debiasing`` rule). A protected word has P(u) = 1, hence PMI = 1 for
every view, and is never dropped.

View words made of several word pieces ("overhead" -> "over", "##head") are scored with as
many [MASK] tokens as pieces, as the product of the pieces' probabilities at their positions.
All sentences (the full prompt and each prompt-minus-one-word, for every piece count) go through
the masked LM in one batched forward pass with dynamic padding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import torch
from torch import Tensor

from ..utils.errors import ConfigError, require_choice

DEFAULT_TEMPLATE = "This image is depicting a [MASK] view of {prompt}"
NORMALIZATIONS = ("mean", "max", "none")

_WORD = re.compile(r"\w+(?:['\u2019\-]\w+)*", re.UNICODE)


@dataclass(frozen=True)
class Word:
    index: int
    text: str
    start: int
    end: int


def split_words(prompt: str) -> List[Word]:
    """Words of a prompt (letters/digits, with inner apostrophes and hyphens), punctuation apart."""
    return [Word(i, m.group(0), m.start(), m.end()) for i, m in enumerate(_WORD.finditer(prompt))]


def remove_words(prompt: str, remove: Sequence[int]) -> str:
    """The prompt without the words at the given indices, original spelling and punctuation kept;
    whitespace is tidied and a separator left dangling by a removal is dropped."""
    words = split_words(prompt)
    drop = set(remove)
    pieces: List[str] = []
    cursor = 0
    for word in words:
        pieces.append(prompt[cursor:word.start])
        if word.index not in drop:
            pieces.append(word.text)
        cursor = word.end
    pieces.append(prompt[cursor:])
    text = "".join(pieces)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)  # no space before punctuation
    text = re.sub(r"([,;:])(\s*[,;:])+", r"\1", text)  # ", ," -> ","
    text = re.sub(r"^[\s,;:]+|[\s,;:]+$", "", text)  # no leading/trailing separators
    text = re.sub(r"\(\s*\)", "", text)
    return re.sub(r"\s+", " ", text).strip()


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
    normalized: Tensor  # [W, V]
    dropped: Tensor  # [W, V] bool

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
        lines.append("PMI (normalised PMI); x = dropped from that view")
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
    """(word, view) pairs to drop: PMI < 1 and normalised PMI < threshold (appendix C.3)."""
    if normalization == "none":
        return pmi < threshold
    return (pmi < 1.0) & (normalized < threshold)


@dataclass(frozen=True)
class DebiasSettings:
    views: Tuple[str, ...] = ("side", "front", "back", "overhead")  # prompt-processor names
    view_words: Tuple[str, ...] = ("side", "front", "back", "top")  # words scored by the LM
    threshold: float = 0.95
    protected_words: Tuple[str, ...] = ()
    protected_word_indices: Tuple[int, ...] = ()
    p_word: float = 0.5
    normalization: str = "mean"
    template: str = DEFAULT_TEMPLATE

    def validate(self) -> "DebiasSettings":
        if len(self.views) != len(self.view_words) or len(self.views) < 2:
            raise ConfigError("pmi_view_words", list(self.view_words),
                              f"needs one word for each of the views {list(self.views)} (>= 2 views)")
        for word in self.view_words:
            if not word or not word.strip():
                raise ConfigError("pmi_view_words", list(self.view_words), "view words must not be empty")
        if not 0.0 < self.threshold:
            raise ConfigError("debias_threshold", self.threshold, "must be > 0")
        if not 0.0 < self.p_word < 1.0:
            raise ConfigError("debias_p_word", self.p_word, "must lie in (0, 1)")
        require_choice("pmi_normalization", self.normalization, NORMALIZATIONS)
        if self.template.count("[MASK]") != 1 or "{prompt}" not in self.template:
            raise ConfigError("debias_template", self.template,
                              "must contain exactly one [MASK] (the view word) and {prompt}")
        return self


@dataclass
class DebiasResult:
    prompt: str
    view_prompts: Dict[str, str]  # view name -> prompt with the contradicting words removed
    removed: Dict[str, List[str]]  # view name -> removed words
    table: Optional[PMITable]
    protected: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict:
        return {
            "prompt": self.prompt,
            "view_prompts": self.view_prompts,
            "removed": self.removed,
            "protected": self.protected,
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
                   table, list(data.get("protected", [])))


def protected_indices(words: Sequence[Word], settings: DebiasSettings, key: str = "protected_words") -> List[int]:
    """Indices of protected words: by text (case-insensitive) and by index."""
    lowered = [w.text.lower() for w in words]
    indices = set()
    for text in settings.protected_words:
        wanted = [w.text.lower() for w in split_words(text)]
        if not wanted:
            raise ConfigError(key, text, "a protected word must contain a word")
        found = False
        for start in range(len(lowered) - len(wanted) + 1):
            if lowered[start:start + len(wanted)] == wanted:
                indices.update(range(start, start + len(wanted)))
                found = True
        if not found:
            raise ConfigError(key, text, f"is not a word of the prompt; its words are {[w.text for w in words]}")
    for index in settings.protected_word_indices:
        if not 0 <= index < len(words):
            raise ConfigError("protected_word_indices", index,
                              f"out of range: the prompt has {len(words)} words (0-based)")
        indices.add(index)
    return sorted(indices)


def debias_prompt(prompt: str, settings: DebiasSettings, scorer: ViewScorer) -> DebiasResult:
    """Per-view prompts with the words that contradict each view removed (one batched LM pass)."""
    settings.validate()
    if not prompt or not prompt.strip():
        raise ConfigError("prompt", prompt, "must not be empty")
    words = split_words(prompt)
    protected = protected_indices(words, settings)
    if not words:
        return DebiasResult(prompt, {v: prompt for v in settings.views}, {v: [] for v in settings.views}, None)
    sentences = [prompt] + [remove_words(prompt, [w.index]) for w in words]
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
    view_prompts, removed = {}, {}
    for j, view in enumerate(settings.views):
        drop = [w.index for w in words if dropped[w.index, j]]
        if drop and not remove_words(prompt, drop):  # never leave a view with no subject at all
            dropped[:, j] = False
            drop = []
        view_prompts[view] = remove_words(prompt, drop)
        removed[view] = [words[i].text for i in drop]
    return DebiasResult(prompt, view_prompts, removed, table, [words[i].text for i in protected])


def cached_debias(prompt: str, settings: DebiasSettings, model_name: str, cache_dir: str,
                  make_scorer, use_cache: bool = True) -> Tuple[DebiasResult, str, bool]:
    """``debias_prompt`` through an on-disk JSON cache keyed by everything that affects the
    result (model, prompt, views, view words, template, threshold, protected words, P(u),
    normalisation). The scorer is built only on a miss. Returns (result, cache path, hit)."""
    import dataclasses
    import os

    from ..utils.cache import cache_key, read_json, write_json

    settings.validate()
    if not prompt or not prompt.strip():
        raise ConfigError("prompt", prompt, "must not be empty")
    protected_indices(split_words(prompt), settings)  # config errors before any model loads
    key = cache_key(kind="bert-pmi-debias", model=model_name, prompt=prompt,
                    settings=dataclasses.asdict(settings))
    path = os.path.join(cache_dir, f"{key}.json")
    if use_cache:
        data = read_json(path)
        if data is not None:
            return DebiasResult.from_dict(data), path, True
    result = debias_prompt(prompt, settings, make_scorer())
    write_json(path, result.as_dict())
    return result, path, False
