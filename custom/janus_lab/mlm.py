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
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, BertTokenizer

from antijanus.utils.cache import save_safetensors
from .data import WorldBias, make_samples
from .training import log_every
from .vocab import write_wordpiece_vocab

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
    steps: int = 3000
    batch: int = 64
    lr: float = 2e-3
    p_mask_other: float = 0.15  # ordinary MLM masking of the caption's tokens

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def view_sentences(samples) -> List[Tuple[str, str]]:
    """(sentence with the true view word, the view) per sample; an overhead sample gives one
    sentence per overhead word."""
    out = []
    for s in samples:
        for word in VIEW_WORDS[s.view]:
            out.append((TEMPLATE.replace("[MASK]", word).format(caption=s.caption), s.view))
    return out


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


def masked_loss(model, input_ids, attention_mask, labels):
    """Cross-entropy at the masked positions only: the 30522-way head runs where it is read."""
    hidden = model.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
    where = labels != -100
    logits = model.cls(hidden[where])
    return F.cross_entropy(logits, labels[where])


def train_mlm(out: str, settings: MLMSettings = MLMSettings(), log=print) -> Dict[str, object]:
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    start = time.time()
    vocab_folder = os.path.join(out, "_vocab")
    write_wordpiece_vocab(vocab_folder)
    tokenizer = BertTokenizer.from_pretrained(vocab_folder)
    samples, _ = make_samples(settings.bias)  # captions need the rendered visibility
    pairs = view_sentences(samples)
    batch_ids = tokenizer([p[0] for p in pairs], padding=True, return_tensors="pt")
    ids, attention = batch_ids.input_ids, batch_ids.attention_mask
    # the view word sits right after "this image is depicting a": position 6 ([CLS] first)
    view_position = 6
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=settings.hidden,
                        num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
                        intermediate_size=settings.intermediate, max_position_embeddings=128)
    model = BertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(settings.seed)
    special = torch.tensor(tokenizer.all_special_ids)
    model.train()
    tick = log_every(30.0, log)
    for step in range(settings.steps):
        lr = settings.lr * min(1.0, (step + 1) / 100) * (1.0 - step / settings.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, ids.shape[0], (settings.batch,), generator=g)
        x, mask = ids[index].clone(), attention[index]
        labels = torch.full_like(x, -100)
        other = (torch.rand(x.shape, generator=g) < settings.p_mask_other) & (mask > 0) & ~torch.isin(x, special)
        other[:, : view_position + 1] = False
        chosen = other.clone()
        chosen[:, view_position] = True
        labels[chosen] = x[chosen]
        x[chosen] = tokenizer.mask_token_id
        loss = masked_loss(model, x, mask, labels)
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
              "timings": {"total_s": time.time() - start}, "torch": torch.__version__}
    with open(os.path.join(out, "lab_training.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record
