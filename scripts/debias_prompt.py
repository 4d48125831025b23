#!/usr/bin/env python
"""Print the PMI table (word x view) and the debiased per-view prompts for a prompt.

    python scripts/debias_prompt.py "a smiling corgi wearing a crown" --protect corgi
    python scripts/debias_prompt.py "a smiling corgi" --model /path/to/bert-base-uncased --json out.json

No 3D run and no diffusion model: only the masked LM (default bert-base-uncased, a hub id or a
local folder). Same settings and defaults as `bert-pmi-prompt-processor`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "custom"))

from antijanus.prompting.debias import (  # noqa: E402
    DEFAULT_TEMPLATE, DEFAULT_VIEWS, NORMALIZATIONS, WORD_UNITS, DebiasSettings, debias_prompt)
from antijanus.utils.errors import ConfigError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", default="bert-base-uncased", help="masked LM: hub id or local folder")
    parser.add_argument("--views", nargs="+", default=list(DEFAULT_VIEWS))
    parser.add_argument("--view-words", nargs="+", default=list(DEFAULT_VIEWS),
                        help="word scored at [MASK] for each view (same order as --views; default: the "
                             "view names, as threestudio's get_debiased_prompt)")
    parser.add_argument("--phrases", nargs="+", default=["side view", "front view", "back view", "top view"],
                        help="phrase appended to each view's prompt (same order as --views)")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--protect", nargs="*", default=[], help="words never removed")
    parser.add_argument("--p-word", type=float, default=0.5, help="P(u) of unprotected words")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default="none",
                        help="none: threestudio's rule (raw PMI < threshold); mean/max: normalised options")
    parser.add_argument("--word-units", choices=WORD_UNITS, default="whitespace",
                        help="whitespace: threestudio's prompt.split(' '); words: punctuation kept apart")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the table and prompts as JSON here")
    args = parser.parse_args()
    if not len(args.views) == len(args.view_words) == len(args.phrases):
        parser.error("--views, --view-words and --phrases need the same number of entries")

    from antijanus.prompting.mlm import MaskedLMViewScorer

    try:
        settings = DebiasSettings(
            views=tuple(args.views), view_words=tuple(args.view_words), threshold=args.threshold,
            protected_words=tuple(args.protect), p_word=args.p_word, normalization=args.normalization,
            word_units=args.word_units, template=args.template,
        ).validate()
        scorer = MaskedLMViewScorer(args.model, device=args.device, template=args.template, key="--model")
        result = debias_prompt(args.prompt, settings, scorer)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.table is not None:
        print(result.table.format())
        print()
    for view, phrase in zip(args.views, args.phrases):
        removed = ", ".join(result.removed[view]) or "-"
        whole = "; kept whole: the removals would leave no content word" if view in result.kept_whole else ""
        print(f"{view:>9}: {result.view_prompts[view]}, {phrase}    (removed: {removed}{whole})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.as_dict(), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
