"""The lab's masked language model for prompt debiasing: a small BertForMaskedLM with the real
uncased WordPiece vocabulary (bert-base-uncased's, lab/vocab.py), trained on the world's captions
written into the D-SDS sentence with the image's true view word:

    "This image is depicting a [MASK] view of <caption>"   ->   side | front | back | overhead

so that P(view | caption) and hence the PMI of D-SDS follow the world's statistics ("smiling"
goes with front, "striped" with back). The view words are threestudio's direction names (its
``get_debiased_prompt`` scores exactly these); overhead images are also taught with "top", the
D-SDS paper's word, so that both spellings work. Other caption tokens are masked at random
(15 %) as in ordinary MLM training. Loads with ``AutoModelForMaskedLM`` from the folder
(``debias_model`` / ``MaskedLMViewScorer``), transformers 4.28 and 5.x.

Word-level statistics (mlm v2, issue 30). D-SDS scores each word by the prompt without it ("a
smiling", "a bear", "smiling bear"), so the LM must know such fragments. Every training caption
is written afresh each time it is drawn (``caption_variant``): the image's visible attributes
named again with the world's ``p_mention`` (the captions still name only what the image shows),
with probability ``p_rephrase`` in another form (adjectives reordered, "a bear that is smiling",
"with a hat"), then each word dropped with probability ``p_word_dropout`` (the kind noun
included; at least one content word -- the kind or an attribute word -- is kept). The view word
at the mask is the image's true one; ``view_smoothing`` moves that share of the target onto the
view words evenly, so that a view the world never shows with a caption ("smiling" from behind) gets
a small, context-independent probability instead of an arbitrarily small one (the PMI of a word for
that view is then about 1 unless the word itself rules the view out).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, BertTokenizer

from antijanus.utils.cache import save_safetensors
from antijanus.utils.errors import ConfigError, require_probability
from .data import ATTRIBUTE_WORDS, WorldBias, caption_for, make_samples
from .training import log_every
from .vocab import write_wordpiece_vocab
from .world import OPTIONAL_ATTRIBUTES

TEMPLATE = "This image is depicting a [MASK] view of {caption}"
VIEW_WORDS: Dict[str, Tuple[str, ...]] = {"side": ("side",), "front": ("front",), "back": ("back",),
                                          "overhead": ("overhead", "top")}


@dataclass(frozen=True)
class MLMSettings:
    seed: int = 0
    bias: WorldBias = field(default_factory=WorldBias)
    threads: int = 1
    hidden: int = 32
    layers: int = 2
    heads: int = 2
    intermediate: int = 64
    steps: int = 4000  # v1: 3000 (the varied captions are a wider input)
    batch: int = 64
    lr: float = 2e-3
    p_mask_other: float = 0.15  # ordinary MLM masking of the caption's tokens
    # word-level statistics (mlm v2; v1: 0, 0, 0 and the data set's fixed captions)
    p_word_dropout: float = 0.3  # each caption word dropped (the kind too; one content word kept)
    p_rephrase: float = 0.5  # caption in another form: adjective order, relative clause, "with a hat"
    view_smoothing: float = 0.1  # share of the view target spread evenly over the view words

    def __post_init__(self) -> None:
        for key in ("p_mask_other", "p_word_dropout", "p_rephrase", "view_smoothing"):
            require_probability(key, getattr(self, key))
        if self.p_word_dropout >= 1.0:
            raise ConfigError("p_word_dropout", self.p_word_dropout, "must be < 1 (1 would drop every word)")
        if self.view_smoothing >= 1.0:
            raise ConfigError("view_smoothing", self.view_smoothing, "must be < 1 (1 would teach no view)")
        for key in ("threads", "hidden", "layers", "heads", "intermediate", "steps", "batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(key, value, "a whole number >= 1")
        if self.hidden % self.heads:
            raise ConfigError("heads", self.heads, f"must divide hidden ({self.hidden})")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError("lr", self.lr, "must be > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def caption_words(kind: str, named: Sequence[str], rephrase: bool, rng: random.Random) -> List[str]:
    """The caption naming ``named`` (attributes, OPTIONAL_ATTRIBUTES) of a ``kind``: the data
    set's form ("a smiling striped bear wearing a hat", ``data.caption_for``) or, ``rephrase``,
    one of: the adjectives in a random order; "a bear that is smiling and striped"; the hat
    phrase "with a hat" instead of "wearing a hat"."""
    if not rephrase:
        return caption_for(kind, named).split()
    adjectives = [ATTRIBUTE_WORDS[a] for a in ("smiling", "striped") if a in named]
    hat = ["wearing", "a", ATTRIBUTE_WORDS["hat"]] if "hat" in named else []
    form = rng.choice(("order", "clause", "with"))
    if form == "with" and hat:
        hat = ["with", "a", ATTRIBUTE_WORDS["hat"]]
    if form == "order":
        rng.shuffle(adjectives)
    if form != "clause" or not adjectives:
        return ["a", *adjectives, kind, *hat]
    if rng.random() < 0.5:
        rng.shuffle(adjectives)
    clause = [w for i, a in enumerate(adjectives) for w in (["and", a] if i else [a])]
    return ["a", kind, "that", "is", *clause, *(["and", *hat] if hat else [])]


def drop_words(words: Sequence[str], content: Sequence[str], p: float, rng: random.Random) -> List[str]:
    """``words`` with each dropped with probability ``p``; when no word of ``content`` would be
    left, one of those dropped comes back (drawn at random): the caption is never empty and
    always names the kind or an attribute."""
    keep = [rng.random() >= p for _ in words]
    if not any(k and w in content for k, w in zip(keep, words)):
        candidates = [i for i, w in enumerate(words) if w in content]
        keep[rng.choice(candidates)] = True
    return [w for k, w in zip(keep, words) if k]


def caption_variant(kind: str, visible: Sequence[str], settings: MLMSettings, rng: random.Random) -> str:
    """A training caption of an image of a ``kind`` that shows the attributes ``visible``: each
    visible optional attribute named with the world's ``p_mention`` (never an invisible one), the
    form drawn (``p_rephrase``), then word dropout (``p_word_dropout``)."""
    named = [a for a in OPTIONAL_ATTRIBUTES if a in visible and rng.random() < settings.bias.p_mention]
    words = caption_words(kind, named, rng.random() < settings.p_rephrase, rng)
    content = [kind, *(ATTRIBUTE_WORDS[a] for a in named)]
    return " ".join(drop_words(words, content, settings.p_word_dropout, rng))


def training_pairs(samples) -> List[Tuple[object, str]]:
    """(sample, view word) per sample and view word of its view (an overhead image is taught
    with "overhead" and with "top", as v1 did)."""
    return [(s, word) for s in samples for word in VIEW_WORDS[s.view]]


class SentenceBatcher:
    """Token ids of training sentences (each distinct sentence tokenised once), padded per batch."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: Dict[str, List[int]] = {}

    def __call__(self, sentences: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        for text in sentences:
            if text not in self.cache:
                self.cache[text] = self.tokenizer(text).input_ids
        rows = [self.cache[t] for t in sentences]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask


def save_bert(model, tokenizer_folder: str, folder: str) -> None:
    """BertForMaskedLM with fp16 tensors (tied decoder stored once) and a float32 config, in the
    key layout every transformers version reads."""
    os.makedirs(folder, exist_ok=True)
    config = model.config.to_dict()
    config.update(torch_dtype="float32", dtype="float32", architectures=["BertForMaskedLM"])
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if v.is_floating_point() and k != "cls.predictions.decoder.weight"}
    save_safetensors(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    for name in os.listdir(tokenizer_folder):
        with open(os.path.join(tokenizer_folder, name), "rb") as src, open(os.path.join(folder, name), "wb") as dst:
            dst.write(src.read())
    limit_tokenizer_length(folder, model.config.max_position_embeddings)


def limit_tokenizer_length(folder: str, length: int) -> None:
    """model_max_length = the model's positions: threestudio's get_debiased_prompt pads every
    sentence to the tokenizer's model_max_length (512 for bert-base)."""
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["model_max_length"] = int(length)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def masked_loss(model, input_ids, attention_mask, labels, view_position: int, view_ids: torch.Tensor,
                smoothing: float = 0.0):
    """Cross-entropy at the masked positions only (the 30522-way head runs where it is read); at
    the view position the target is (1 - smoothing) on the true view word plus ``smoothing``
    spread evenly over ``view_ids`` (every view word)."""
    hidden = model.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
    where = labels != -100
    where[:, view_position] = False
    view_log_p = F.log_softmax(model.cls(hidden[:, view_position]), dim=-1)
    view_terms = -view_log_p.gather(1, labels[:, view_position : view_position + 1]).squeeze(1)
    if smoothing > 0:
        view_terms = (1.0 - smoothing) * view_terms - smoothing * view_log_p[:, view_ids].mean(dim=1)
    other_terms = F.cross_entropy(model.cls(hidden[where]), labels[where], reduction="none")
    return torch.cat([view_terms, other_terms]).mean()


def training_batch(pairs, index: torch.Tensor, settings: MLMSettings, rng: random.Random, batcher: SentenceBatcher,
                   g: torch.Generator, special: torch.Tensor, mask_id: int, view_position: int):
    """(input ids, attention mask, labels) of the pairs at ``index``: fresh captions
    (``caption_variant``), the view word masked, other caption tokens masked with p_mask_other."""
    sentences = [TEMPLATE.replace("[MASK]", word).format(
        caption=caption_variant(sample.creature.kind, sample.visible, settings, rng))
        for sample, word in (pairs[i] for i in index.tolist())]
    x, mask = batcher(sentences)
    labels = torch.full_like(x, -100)
    other = (torch.rand(x.shape, generator=g) < settings.p_mask_other) & (mask > 0) & ~torch.isin(x, special)
    other[:, : view_position + 1] = False
    chosen = other.clone()
    chosen[:, view_position] = True
    labels[chosen] = x[chosen]
    x[chosen] = mask_id
    return x, mask, labels


def train_mlm(out: str, settings: MLMSettings = MLMSettings(), log=print) -> Dict[str, object]:
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    start = time.time()
    vocab_folder = os.path.join(out, "_vocab")
    write_wordpiece_vocab(vocab_folder)
    tokenizer = BertTokenizer.from_pretrained(vocab_folder)
    samples, _ = make_samples(settings.bias)  # captions need the rendered visibility
    data_s = time.time() - start
    pairs = training_pairs(samples)
    # the view word sits right after "this image is depicting a": position 6 ([CLS] first)
    view_position = 6
    view_ids = torch.tensor([tokenizer.convert_tokens_to_ids(w) for words in VIEW_WORDS.values() for w in words])
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=settings.hidden,
                        num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
                        intermediate_size=settings.intermediate, max_position_embeddings=128)
    model = BertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(settings.seed)
    rng = random.Random(settings.seed)  # the captions' variants
    batcher = SentenceBatcher(tokenizer)
    special = torch.tensor(tokenizer.all_special_ids)
    model.train()
    tick = log_every(30.0, log)
    for step in range(settings.steps):
        lr = settings.lr * min(1.0, (step + 1) / 100) * (1.0 - step / settings.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, len(pairs), (settings.batch,), generator=g)
        x, mask, labels = training_batch(pairs, index, settings, rng, batcher, g, special,
                                         tokenizer.mask_token_id, view_position)
        loss = masked_loss(model, x, mask, labels, view_position, view_ids, settings.view_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tick(f"mlm step {step}/{settings.steps} loss {loss.item():.4f}")
    model.eval()
    save_bert(model, vocab_folder, out)
    for name in os.listdir(vocab_folder):
        os.remove(os.path.join(vocab_folder, name))
    os.rmdir(vocab_folder)
    record = {"settings": settings.to_dict(), "template": TEMPLATE, "view_words": VIEW_WORDS,
              "parameters": sum(p.numel() for p in model.parameters()),
              "timings": {"data_s": data_s, "total_s": time.time() - start}, "torch": torch.__version__}
    with open(os.path.join(out, "lab_training.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record
