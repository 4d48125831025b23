"""Masked-language-model view scorer for prompt debiasing (BERT by default).

Loads ``AutoTokenizer`` + ``AutoModelForMaskedLM`` with ``from_pretrained`` from a hub id
(``bert-base-uncased``) or a local folder. ``view_probabilities`` scores every sentence for
every view word in one forward pass with dynamic padding (threestudio pads each sentence to 512
tokens and runs them one at a time).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor
from transformers import AutoModelForMaskedLM, AutoTokenizer

from ..utils.errors import ConfigError
from ..utils.loading import check_model_path, load_pretrained, require_layout
from .debias import DEFAULT_TEMPLATE


class MaskedLMViewScorer:
    def __init__(self, name_or_path: str = "bert-base-uncased", device: str = "cpu",
                 template: str = DEFAULT_TEMPLATE, key: str = "debias_model") -> None:

        check_model_path(key, name_or_path)
        require_layout(key, name_or_path, "masked language model", ["config.json"])
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        what = "masked language model (e.g. bert-base-uncased)"
        self.tokenizer = load_pretrained(key, name_or_path, what,
                                         lambda: AutoTokenizer.from_pretrained(name_or_path))
        if self.tokenizer.mask_token is None:
            raise ConfigError(key, name_or_path, "is not a masked language model (no mask token)")
        self.model = load_pretrained(key, name_or_path, what,
                                     lambda: AutoModelForMaskedLM.from_pretrained(name_or_path))
        self.model = self.model.to(device).eval()
        self.device = torch.device(device)
        self.template = template

    def view_pieces(self, view_words: Sequence[str]) -> List[List[int]]:
        pieces = []
        for word in view_words:
            ids = self.tokenizer(word, add_special_tokens=False).input_ids
            if not ids or self.tokenizer.unk_token_id in ids:
                raise ConfigError("pmi_view_words", word,
                                  "cannot be spelled in the masked LM's vocabulary")
            pieces.append(ids)
        return pieces

    @torch.no_grad()
    def view_probabilities(self, prompts: Sequence[str], view_words: Sequence[str]) -> Tensor:
        """P(v | sentence) normalised over the views, [len(prompts), len(view_words)].

        A view word of k word pieces is scored at k consecutive [MASK] tokens as the product
        of its pieces' probabilities (sum of log-probabilities)."""
        pieces = self.view_pieces(view_words)
        by_length: Dict[int, List[int]] = defaultdict(list)
        for v, ids in enumerate(pieces):
            by_length[len(ids)].append(v)
        mask = self.tokenizer.mask_token
        rows: List[Tuple[int, int]] = []  # (prompt index, piece count)
        sentences: List[str] = []
        for length in sorted(by_length):
            masks = " ".join([mask] * length)
            for i, prompt in enumerate(prompts):
                sentences.append(self.template.replace("[MASK]", masks).format(prompt=prompt))
                rows.append((i, length))
        batch = self.tokenizer(sentences, padding=True, truncation=True, return_tensors="pt").to(self.device)
        is_mask = batch.input_ids == self.tokenizer.mask_token_id
        log_probs = torch.log_softmax(self.mask_logits(batch, is_mask).float(), dim=-1).cpu()  # [masks, vocab]
        first_mask = torch.cumsum(is_mask.sum(dim=1), 0) - is_mask.sum(dim=1)
        scores = torch.full((len(prompts), len(view_words)), float("-inf"))
        for row, (i, length) in enumerate(rows):
            if int(is_mask[row].sum()) != length:  # the prompt was truncated into the masks
                raise ConfigError("debias_template", self.template, "puts [MASK] after {prompt}, and with this "
                                  f"prompt ({prompts[i][:60]!r}...) the masked LM's {self.tokenizer.model_max_length} "
                                  "tokens end before the [MASK]: put [MASK] before {prompt} (as the default "
                                  "template does) or shorten the prompt")
            start = int(first_mask[row])
            for v in by_length[length]:
                scores[i, v] = sum(log_probs[start + j, t] for j, t in enumerate(pieces[v]))
        return torch.softmax(scores, dim=1)

    def mask_logits(self, batch, is_mask: Tensor) -> Tensor:
        """Vocabulary logits at the [MASK] positions only, in reading order: the encoder runs
        on the whole batch, the prediction head (a 30k-way projection) only where it is read."""
        head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        base = getattr(self.model, "base_model", None)
        if head is None or base is None or base is self.model:
            return self.model(**batch).logits[is_mask]
        hidden = base(**batch)[0]
        return head(hidden[is_mask])
