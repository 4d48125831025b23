"""What every antijanus prompt processor adds to threestudio's: text embeddings written
atomically, the "" embedding in the output, view phrases that survive long prompts, outputs
placed inside the run's trial folder, and the multi-GPU "rank 0 computes, the others read"
helper.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import threestudio
from threestudio.models.prompt_processors.base import hash_prompt
from threestudio.utils.misc import barrier, get_rank

from ..core.views import VIEWS, ViewRanges, classify_views
from ..prompting.text_encoders import (clip_text_embeddings, encoder_max_tokens, load_tokenizer,
                                       t5_text_embeddings, text_encoder_width, token_counter)
from ..prompting.trial_tag import register_tag_resolver
from ..prompting.view_prompts import check_room_for_words, fit_view_prompt, subject_words, view_phrases_in
from ..utils.cache import load_tensor_of_shape, save_tensor
from ..utils.errors import ConfigError
from .registry import calling_system

# the shipped configs' `tag: ${antijanus_tag:...}`, there before threestudio's launcher reads them
register_tag_resolver()

# threestudio's direction order (its built-in Perp-Neg indexes side=0, front=1, back=2, overhead=3)
DIRECTION_ORDER = ("side", "front", "back", "overhead")
TRIAL_DIR = "{trial_dir}"  # placeholder in output paths: the run's trial folder


def load_prompt_library() -> Dict:
    """threestudio's prompt library (for `lib:` prompts), when run from a threestudio checkout."""
    if os.path.exists("load/prompt_library.json"):
        with open("load/prompt_library.json") as f:
            return json.load(f)
    return {}


def view_condition(view: str, ranges: ViewRanges):
    index = VIEWS.index(view)
    return lambda elevation, azimuth, distance: classify_views(elevation, azimuth, ranges) == index


def merged_view_mapping(key: str, given: Optional[Mapping], defaults: Mapping[str, str]) -> Dict[str, str]:
    """A per-view dict key: the given entries over the defaults, so that one entry can be
    overridden alone (``system.prompt_processor.pmi_view_words.overhead=top``)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(DIRECTION_ORDER))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", given[unknown[0]], "unknown view name", DIRECTION_ORDER)
    merged = {**defaults, **given}
    empty = [v for v in DIRECTION_ORDER if not str(merged.get(v, "")).strip()]
    if empty:
        raise ConfigError(key, merged, f"every view needs a non-empty entry (empty: {empty})", DIRECTION_ORDER)
    return {v: str(merged[v]) for v in DIRECTION_ORDER}


def keys_changed_from_defaults(cfg, config_type, names: Sequence[str]) -> List[str]:
    """The keys among ``names`` whose value in ``cfg`` differs from ``config_type``'s default."""
    changed = []
    for f in dataclasses.fields(config_type):
        if f.name in names:
            default = f.default_factory() if callable(f.default_factory) else f.default
            if cfg.get(f.name) != default:
                changed.append(f.name)
    return changed


#: which rank did what, printed on every rank: threestudio.info speaks for rank 0 only, while a
#: child of Lightning's "pytorch_lightning" logger reaches the stderr handler Lightning installs
#: in every process (formatted by threestudio's launch.py). The two-rank launch test reads these
#: lines ("antijanus rank <r>: ..."), so keep the namespace when renaming.
rank_logger = logging.getLogger("pytorch_lightning.antijanus")


def rank_zero_then_shared(what: str, compute, read_cached):
    """Multi-GPU: rank 0 runs ``compute`` (which writes its cache file atomically); after a
    barrier the other ranks read the result from that cache with ``read_cached``."""
    rank = get_rank()
    result = compute() if rank == 0 else None
    barrier()
    if rank != 0:
        result = read_cached()
    rank_logger.info(f"antijanus rank {rank}: {what} {'computed' if rank == 0 else 'read from the cache'}")
    return result


def no_model_on_other_ranks():
    raise RuntimeError("antijanus cache missing on a non-zero rank after the barrier")


def find_trial_dir() -> Optional[str]:
    """The trial folder of the threestudio run that is creating this processor.

    threestudio's config cannot pass it to module configs: ``${...}`` interpolations are
    resolved before the trial folder (with its timestamp) exists, and module configs never see
    ``trial_dir``. The launcher gives it to the system (``set_save_dir(<trial>/save)``), and the
    systems create their prompt processor from their own methods (``on_fit_start``), so the
    system is on the call stack: its save folder's parent is the trial folder."""
    system = calling_system(lambda owner: _save_dir_of(owner) is not None)
    if system is not None:
        return os.path.dirname(os.path.normpath(_save_dir_of(system)))
    return launcher_trial_dir()


def launcher_trial_dir() -> Optional[str]:
    """The trial folder in threestudio's ``launch.py``, whose local ``cfg`` (the run's
    ExperimentConfig, with ``trial_dir``) is on the call stack while it creates the system: a
    system that makes its processor in ``configure`` (``prolificdreamer-system``) does so before
    the launcher's ``set_save_dir``."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            cfg = frame.f_locals.get("cfg")
            trial = getattr(cfg, "trial_dir", None) if cfg is not None else None
            if isinstance(trial, str) and trial and getattr(cfg, "system_type", None):
                return trial
            frame = frame.f_back
        return None
    finally:
        del frame


def _save_dir_of(obj) -> Optional[str]:
    if obj is None or not callable(getattr(type(obj), "get_save_dir", None)):
        return None
    value = getattr(obj, "_save_dir", None)
    return value if isinstance(value, str) else None


def expand_trial_dir(key: str, path: Optional[str]) -> Optional[str]:
    """``{trial_dir}`` in an output path -> the run's trial folder (see ``find_trial_dir``);
    outside a threestudio run it stands for the current folder, with one warning."""
    if not path or TRIAL_DIR not in path:
        return path
    trial = find_trial_dir()
    if trial is None:
        threestudio.warn(f"antijanus: `{key}` = {path!r}: no threestudio trial folder (the processor was not "
                         f"created by a threestudio system); {TRIAL_DIR} stands for the current folder")
        trial = "."
    return path.replace(TRIAL_DIR, trial)


def save_embeddings(model: str, prompts: Sequence[str], embeddings, cache_dir: str) -> None:
    """Embeddings in threestudio's text-embedding cache (its file names), written atomically."""
    for prompt, embedding in zip(prompts, embeddings):
        save_tensor(os.path.join(cache_dir, f"{hash_prompt(model, prompt)}.pt"), embedding.detach().cpu().clone())


def encode_clip_to_cache(model: str, prompts: List[str], cache_dir: str) -> None:
    """threestudio's Stable Diffusion ``spawn_func`` (CLIP), written atomically."""
    save_embeddings(model, prompts, clip_text_embeddings(model, prompts), cache_dir)


def encode_t5_to_cache(model: str, prompts: List[str], cache_dir: str, load_in_8bit: bool = False) -> None:
    """threestudio's DeepFloyd IF ``spawn_func`` (T5, 8 bit or full precision), written atomically."""
    save_embeddings(model, prompts, t5_text_embeddings(model, prompts, load_in_8bit), cache_dir)


class AntijanusPromptProcessorMixin:
    """Mixed in before a threestudio prompt processor class. Subclasses with T5 set
    ``text_encoder_kind = "t5"`` and a ``spawn_func`` (a picklable callable) in configure."""

    text_encoder_kind = "clip"
    view_user_parts: Optional[List[str]] = None  # the user's part of each direction's prompt
    # the key that sets the view phrases, named in errors; None: threestudio's fixed phrases
    view_phrase_key: Optional[str] = "view_phrases"

    @staticmethod
    def spawn_func(pretrained_model_name_or_path, prompts, cache_dir):
        encode_clip_to_cache(pretrained_model_name_or_path, prompts, cache_dir)

    def prepare_text_embeddings(self):
        self.fit_view_prompts()
        rank_logger.info(f"antijanus rank {get_rank()}: view prompts {json.dumps(list(self.prompts_vd))} "
                         f"negative {json.dumps(list(self.negative_prompts_vd))}")
        if get_rank() == 0 and self.cfg.use_cache:
            self.drop_unreadable_embeddings([self.prompt, self.negative_prompt, *self.prompts_vd,
                                             *self.negative_prompts_vd])
        super().prepare_text_embeddings()  # (threestudio's: rank 0 computes what is not in the cache)

    def embedding_path(self, prompt: str) -> str:
        """threestudio's text-embedding cache file of ``prompt``."""
        return os.path.join(self._cache_dir, f"{hash_prompt(self.cfg.pretrained_model_name_or_path, prompt)}.pt")

    def drop_unreadable_embeddings(self, prompts: Sequence[str]) -> None:
        """Cached embeddings that cannot be loaded (truncated, garbage) or hold something else
        than this model's embedding (another shape, inf/nan) are removed, each with one warning
        naming the file, so that threestudio's existence check computes them again."""
        for prompt in dict.fromkeys(prompts):
            self.load_embedding(self.embedding_path(prompt))

    def embedding_shape(self) -> Tuple[int, Optional[int]]:
        """(tokens, width) of this model's text embeddings: the encoder's window and its width
        (None when its config cannot be read)."""
        if getattr(self, "_embedding_shape", None) is None:
            self._embedding_shape = (self.token_budget()[1], text_encoder_width(self.cfg.pretrained_model_name_or_path))
        return self._embedding_shape

    def load_embedding(self, path: str, map_location=None):
        """The cached embedding in ``path``, or None (missing; invalid: removed with a warning)."""
        return load_tensor_of_shape(path, self.embedding_shape(), map_location)

    def load_from_cache(self, prompt: str):
        """threestudio's ``load_from_cache``; an unreadable or invalid file is computed again
        here instead of a crash in ``torch.load`` or ``torch.stack``."""
        path = self.embedding_path(prompt)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Text embedding file {path} for model {self.cfg.pretrained_model_name_or_path} "
                                    f"and prompt [{prompt}] not found.")
        embedding = self.load_embedding(path, map_location=self.device)
        if embedding is None:  # unreadable or invalid: removed with a warning naming it
            self.spawn_func(self.cfg.pretrained_model_name_or_path, [prompt], self._cache_dir)
            embedding = self.load_embedding(path, map_location=self.device)
        if embedding is None:
            raise RuntimeError(f"antijanus: the text embedding {path} of [{prompt}] cannot be read after computing it")
        return embedding

    def require_prompt(self, prompt) -> str:
        """The prompt, or a ConfigError naming it when there is none (``prompt=`` gives None)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError("prompt", prompt, "must not be empty: give the prompt, e.g. "
                              "system.prompt_processor.prompt=\"a DSLR photo of a corgi\"")
        return prompt

    def check_prompt_subject(self, prompt: str, phrases: Sequence[str]) -> None:
        """A prompt made only of view words is a ConfigError (nothing to train on); a prompt that
        names a view itself ('..., back view') is one warning: every view's prompt says it."""
        if not subject_words(prompt, phrases):
            raise ConfigError("prompt", prompt, "names only views, no object: there is nothing to train on "
                              "(every view would be trained on '<views>, <view phrase>'); name the object, "
                              "e.g. \"a corgi\"")
        named = view_phrases_in(prompt, phrases)
        if named:
            threestudio.warn(f"antijanus: `system.prompt_processor.prompt` = {prompt!r} names the view(s) {named} "
                             "itself, so every view's prompt says it ('<prompt>, front view' says "
                             f"{named[0]!r} too) and view-dependent prompting contradicts itself; remove "
                             f"{named} from the prompt")

    def token_budget(self) -> Tuple[Callable[[str], int], int]:
        """(token counter of the text encoder's tokenizer, its window), the tokenizer loaded once."""
        if getattr(self, "_token_budget", None) is None:
            tokenizer = load_tokenizer(self.cfg.pretrained_model_name_or_path)
            self._token_budget = (token_counter(tokenizer), encoder_max_tokens(tokenizer, self.text_encoder_kind))
        return self._token_budget

    def phrase_key(self, view: str) -> str:
        return f"{self.view_phrase_key}.{view}" if self.view_phrase_key else "prompt"

    def check_view_phrases_fit(self) -> None:
        """A view phrase that leaves no room for a word of the prompt is a configuration error,
        known from the tokenizer alone: raised before any model (the masked LM) loads."""
        count, limit = self.token_budget()
        for direction in self.directions:
            if self.cfg.get(f"prompt_{direction.name}", None) is None:  # a given prompt_<view> is used as given
                check_room_for_words(self.prompt.split(), direction.prompt, count, limit,
                                     self.phrase_key(direction.name))

    def fit_view_prompts(self) -> None:
        """View prompts longer than the text encoder's window lose the end of the user's part,
        never the view phrase; said once in the log. (threestudio's own prompts are truncated
        by the tokenizer, the view phrase first.)"""
        count, limit = self.token_budget()
        parts = self.view_user_parts or [self.prompt] * len(self.directions)
        shortened = {}
        for i, (direction, part) in enumerate(zip(self.directions, parts)):
            if self.prompts_vd[i] != direction.prompt(part):
                continue  # a prompt_<view> given by the user is used as given
            self.prompts_vd[i], short = fit_view_prompt(part, direction.prompt, count, limit,
                                                        self.phrase_key(direction.name))
            if short is not None:
                shortened[direction.name] = short
        if shortened:
            threestudio.warn(
                f"antijanus: the prompt is {count(self.prompt)} tokens, more than the text encoder's {limit}: "
                f"to keep the view phrases, the view prompts use the first words of it only "
                + " ".join(f"[{d.name}]:[{p}]" for d, p in zip(self.directions, self.prompts_vd)
                           if d.name in shortened))

    def load_empty_text_embeddings(self) -> None:
        """The "" embedding (``empty_text_embeddings``): the guidances use it as the
        unconditional when the negative prompt is a Perp-Neg negative."""
        if get_rank() == 0 and self.load_embedding(self.embedding_path("")) is None:  # missing or invalid
            self.spawn_func(self.cfg.pretrained_model_name_or_path, [""], self._cache_dir)
        barrier()
        self.empty_text_embeddings = self.load_from_cache("")[None, ...]

    def __call__(self):
        output = super().__call__()
        output.empty_text_embeddings = self.empty_text_embeddings
        return output


def t5_spawn_func(load_in_8bit: bool) -> Callable:
    """A picklable ``spawn_func`` for T5 (threestudio may run it in a spawned process)."""
    return functools.partial(encode_t5_to_cache, load_in_8bit=load_in_8bit)
