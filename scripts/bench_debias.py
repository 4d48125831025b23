#!/usr/bin/env python
"""Time prompt debiasing of a 10-word prompt: antijanus (all prompt variants of all views in one
batched, dynamically padded forward pass) against threestudio's method (``get_debiased_prompt``:
each variant padded to 512 tokens and run one by one), reimplemented below as the baseline.
Both use the same full-size bert-base-uncased layout (random weights, built locally) in the same
run; the model is loaded once, outside the timings. Prints ms per prompt and the ratio.

    python scripts/bench_debias.py            # CPU; target: ratio >= 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "custom"))

from antijanus.prompting.debias import DebiasSettings, debias_prompt  # noqa: E402
from antijanus.prompting.mlm import MaskedLMViewScorer  # noqa: E402
from antijanus.testing.tiny_models import make_bert  # noqa: E402

PROMPT = "a smiling corgi wearing a red crown on the beach"
VIEWS = ("side", "front", "back", "overhead")


def threestudio_baseline(prompt, tokenizer, model, threshold=0.95):
    """threestudio 28d9d80 PromptProcessor.get_debiased_prompt, same algorithm and padding."""
    view_ids = tokenizer(" ".join(VIEWS), return_tensors="pt").input_ids[0][1:5]

    def modulate(text):
        tokens = tokenizer(f"This image is depicting a [MASK] view of {text}", padding="max_length",
                           truncation=True, add_special_tokens=True, return_tensors="pt")
        mask_idx = torch.where(tokens.input_ids == tokenizer.mask_token_id)[1]
        logits = F.softmax(model(**tokens).logits[0, mask_idx], dim=-1)[0, view_ids]
        return logits / logits.sum()

    prompts = [prompt.split(" ") for _ in range(4)]
    full = modulate(prompt)
    for idx in range(len(prompt.split(" "))):
        words = prompt.split(" ")
        part = modulate(" ".join(words[:idx] + words[idx + 1:]))
        pmi = full / torch.lerp(part, full, 0.5)
        for i in range(pmi.shape[0]):
            if pmi[i].item() < threshold:
                prompts[i][idx] = ""
    return [" ".join(w for w in p if w) for p in prompts]


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="existing BERT folder (default: bert-base layout, random weights)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        words = set("this image is depicting a view of".split()) | set(PROMPT.split()) | set(VIEWS)
        folder = args.model or make_bert(tmp, sorted(words), size="base")
        scorer = MaskedLMViewScorer(folder)
        settings = DebiasSettings()  # the defaults: threestudio's rule and view words
        n_words = len(PROMPT.split())
        ours = timed(lambda: debias_prompt(PROMPT, settings, scorer), args.repeats)
        baseline = timed(lambda: threestudio_baseline(PROMPT, scorer.tokenizer, scorer.model), args.repeats)
        params = sum(p.numel() for p in scorer.model.parameters()) / 1e6
        print(f"prompt: {PROMPT!r} ({n_words} words), model {params:.0f}M params, "
              f"threads {torch.get_num_threads()}, median of {args.repeats}")
        print(f"{'method':<44}{'ms/prompt':>10}")
        print(f"{'antijanus (1 batched pass, dynamic padding)':<44}{ours:>10.1f}")
        print(f"{'threestudio (11 passes, padded to 512)':<44}{baseline:>10.1f}")
        print(f"speed-up: {baseline / ours:.1f}x (target >= 10x)")
        same = [debias_prompt(PROMPT, settings, scorer).view_prompts[v] for v in VIEWS] == \
            threestudio_baseline(PROMPT, scorer.tokenizer, scorer.model)
        print(f"same view prompts as the threestudio method: {same}")


if __name__ == "__main__":
    main()
