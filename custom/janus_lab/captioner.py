"""A captioner for the Janus lab, so that diffusion-negative prompting (DNP) runs there.

DNP captions the diffusion-negative (DNS) image into the negative prompt n* with BLIP; no BLIP
knows the lab's world. ``LabCaptioner`` writes the caption a captioner of the world would write,
in the world's grammar (``data.caption_for``: "a smiling striped bear wearing a hat"), from the
lab judge's predictions: the judged kind, and every optional attribute (smiling, striped, hat)
judged visible (probability > 0.5, the judge's own rule). It names every visible attribute (the
data's captions name each with probability ``p_mention`` = 0.9; a captioner has no reason to drop
one) and, with ``view_phrase``, appends the judged view's phrase (", back view"), as 10 % of the
training captions do; BLIP does not name views, so the default is off.

It is a captioner plugin (``prompting.captioning``): the committed folder
``custom/janus_lab/models/captioner`` holds ``antijanus_captioner.json`` naming this class and the judge
folder (relative to it), so ``captioner: custom/janus_lab/models/captioner`` in ``dnp-prompt-processor``
or ``scripts/dnp_2d.py --captioner custom/janus_lab/models/captioner`` use it.

Limits, said plainly: the judge always names one of the three kinds, also for an image that shows
no creature at all (a DNS image may be a blob), and it was trained on renders of the world, not on
the prior's samples; its captions are only as good as its predictions on such images.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional

import torch
from torch import Tensor

from antijanus.utils.errors import ConfigError
from antijanus.utils.progress import progress_bar
from .data import VIEW_PHRASES, caption_for
from .judge import CONFIG, WEIGHTS, Judge
from .model_files import model_path
from .world import ATTRIBUTES, KINDS, OPTIONAL_ATTRIBUTES, VIEWS

ATTRIBUTE_THRESHOLD = 0.5  # the judge's own rule for "visible"
PLUGIN_MARKER = "antijanus_captioner.json"  # prompting.captioning.PLUGIN_MARKER (that module imports transformers)


def plugin_judge_folder(folder: str) -> Optional[str]:
    """The judge folder a lab captioner plugin folder reads (None: not a lab captioner folder), so
    that what depends on the captioner also depends on that judge's weights."""
    config = os.path.join(folder, PLUGIN_MARKER)
    if not os.path.isfile(config):
        return None
    with open(config) as f:
        record = json.load(f)
    if record.get("class") != f"{__name__}:{LabCaptioner.__name__}":
        return None
    return _judge_folder(folder, record.get("options", {}).get("judge"))


def _judge_folder(folder: Optional[str], judge: Optional[str]) -> str:
    """The judge folder: ``judge`` (relative to the plugin folder) or the committed judge."""
    if judge is None:
        return model_path("judge")
    judge = os.path.expanduser(judge)
    return os.path.normpath(judge if os.path.isabs(judge) or folder is None else os.path.join(folder, judge))


class LabCaptioner:
    """Captions in the world's grammar from the lab judge (``prompting.dnp.Captioner``)."""

    def __init__(self, folder: Optional[str] = None, device="cpu", max_new_tokens: int = 30,
                 key: str = "captioner", judge: Optional[str] = None, view_phrase: bool = False) -> None:
        self.check(folder, key=key, judge=judge, view_phrase=view_phrase)
        if max_new_tokens < 1:
            raise ConfigError("caption_max_new_tokens", max_new_tokens, "must be >= 1")
        self.judge = Judge.load(_judge_folder(folder, judge), str(device))
        self.max_new_tokens = max_new_tokens  # at most this many words (captions have 2 to 10)
        self.view_phrase = view_phrase

    @classmethod
    def check(cls, folder: Optional[str], key: str = "captioner", judge: Optional[str] = None,
              view_phrase: bool = False) -> None:
        """Configuration errors before anything is sampled: a missing judge folder, a bad option."""
        path = _judge_folder(folder, judge)
        missing = [f for f in (CONFIG, WEIGHTS) if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise ConfigError(key, folder, f"the lab captioner's judge folder {path} lacks {', '.join(missing)} "
                              "(option 'judge' in antijanus_captioner.json, relative to the captioner folder)")
        if not isinstance(view_phrase, bool):
            raise ConfigError(key, folder, f"option 'view_phrase' must be true or false, not {view_phrase!r}")

    def caption_of(self, kind: int, attribute_probs: Tensor, view: int) -> str:
        """The caption of one judged image (kind index, attribute probabilities, view index)."""
        named = [a for a in OPTIONAL_ATTRIBUTES if float(attribute_probs[ATTRIBUTES.index(a)]) > ATTRIBUTE_THRESHOLD]
        text = caption_for(KINDS[kind], named)
        if self.view_phrase:
            text = f"{text}, {VIEW_PHRASES[VIEWS[view]][0]}"
        return " ".join(text.split(" ")[: self.max_new_tokens])

    @torch.no_grad()
    def caption(self, images: Tensor, progress: bool = False) -> List[str]:
        """Images [B, 3, H, W] in [0, 1] -> one caption each."""
        bar = progress_bar(len(images), "captioning", unit="image", enabled=progress)
        verdict = self.judge(images)
        captions = [self.caption_of(int(k), p, int(v)) for k, p, v in
                    zip(verdict["kind"], verdict["attribute_probs"], verdict["view"])]
        bar.update(len(images))
        bar.close()
        return captions
