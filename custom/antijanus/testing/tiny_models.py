"""Random-weight model folders in the real diffusers/transformers layouts, built locally.

For tests, benchmarks and CPU integration runs where no model hub is reachable: the folders load
through exactly the same ``from_pretrained`` paths as the real checkpoints. ``size="tiny"`` gives
a model that runs a step in milliseconds on a CPU; ``size="sd21"`` gives the full-size
Stable Diffusion 2.1-base UNet/VAE layout (865M + 84M parameters, random weights) for speed
measurements. Nothing here is meant to produce meaningful images.
"""

from __future__ import annotations

import io
import json
import os
from typing import Mapping, Optional

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (BertConfig, BertForMaskedLM, BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                          BlipImageProcessor, BlipProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig,
                          CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast)

from .clip_alphabet import bytes_to_unicode


def write_clip_tokenizer(folder: str) -> int:
    """A valid CLIP BPE tokenizer with the byte alphabet only (no merges). Returns vocab size."""
    os.makedirs(folder, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")

    tokenizer = CLIPTokenizer(
        os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(folder)
    return len(vocab)


def _sd_unet_kwargs(size: str) -> dict:
    if size == "tiny":
        return dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=32,
        )
    if size == "sd21":  # stabilityai/stable-diffusion-2-1-base unet/config.json
        return dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
        )
    raise ValueError(f"size must be 'tiny' or 'sd21', got {size!r}")


def _sd_vae_kwargs(size: str) -> dict:
    if size == "tiny":
        return dict(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=16,
            block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        )
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def make_stable_diffusion(
    folder: str, size: str = "tiny", seed: int = 0, prediction_type: str = "epsilon",
    with_text_encoder: bool = True,
) -> str:
    """Write a Stable Diffusion folder (unet/, vae/, scheduler/, tokenizer/, text_encoder/)."""
    torch.manual_seed(seed)
    unet_kwargs = _sd_unet_kwargs(size)
    UNet2DConditionModel(**unet_kwargs).save_pretrained(os.path.join(folder, "unet"))
    AutoencoderKL(**_sd_vae_kwargs(size)).save_pretrained(os.path.join(folder, "vae"))
    DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", prediction_type=prediction_type,
    ).save_pretrained(os.path.join(folder, "scheduler"))
    if with_text_encoder:

        vocab_size = write_clip_tokenizer(os.path.join(folder, "tokenizer"))
        hidden = unet_kwargs["cross_attention_dim"]
        text_config = CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        )
        CLIPTextModel(text_config).save_pretrained(os.path.join(folder, "text_encoder"))
    text = with_text_encoder
    _write_model_index(folder, "StableDiffusionPipeline", size, {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"] if text else [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"] if text else [None, None],
        "safety_checker": [None, None], "feature_extractor": [None, None],
        "requires_safety_checker": False,
    })
    return folder


def make_sd512(folder: str, time_embedding_dim: Optional[int] = None) -> str:
    """A tiny SD folder with SD's own geometry (VAE factor 8, 512x512 images, UNet sample size 64,
    attention only at 16x16: a CPU step in well under a second), for what needs SD's sizes, e.g.
    threestudio's built-in guidances (512 / 64 fixed); ``time_embedding_dim`` 1280 for VSD's
    camera embedding (threestudio hard-codes that width)."""
    make_stable_diffusion(folder)
    torch.manual_seed(1)
    UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, time_embedding_dim=time_embedding_dim,
    ).save_pretrained(os.path.join(folder, "unet"))
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, block_out_channels=(8, 8, 8, 8),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    ).save_pretrained(os.path.join(folder, "vae"))
    return folder


def _write_model_index(folder: str, pipeline: str, size: str, components: dict) -> None:
    """model_index.json as diffusers writes it, so that the pipeline classes (threestudio's
    built-in guidances load StableDiffusionPipeline / IFPipeline) can load the folder too."""
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": pipeline, "_diffusers_version": diffusers.__version__,
                   "_antijanus_random_weights": size, **components}, f, indent=2)


# Text the tiny T5 tokenizer is trained on: prompt words of the tests and configs, the view
# phrases, and every letter, digit and common punctuation mark (so no test prompt hits <unk>).
T5_CORPUS = [
    "a zoomed out DSLR photo of a corgi, front view", "a smiling corgi wearing a top hat, side view",
    "a DSLR photo of a lion's face, back view", "overhead view of a delicious hamburger, top view",
    "a colorful toucan with a large beak", "a kangaroo wearing boxing gloves",
    "the quick brown fox jumps over the lazy dog",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 , . ' - ! ? : ; ( ) & \" / +",
]


def write_t5_tokenizer(folder: str) -> int:
    """A real T5 tokenizer: a sentencepiece unigram model (``spiece.model``, trained in well under
    a second on ``T5_CORPUS``) with T5's special ids (pad 0, eos 1, unk 2; no extra ids), loadable
    by the slow ``T5Tokenizer`` (as threestudio's DeepFloyd processor loads it) and, through the
    ``tokenizer.json`` written beside it, by the fast one. Needs ``sentencepiece``. Returns the
    vocab size."""
    import sentencepiece as spm  # optional: sentencepiece (the test extra)

    os.makedirs(folder, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(T5_CORPUS * 4), model_writer=model, model_type="unigram", vocab_size=128,
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2)
    spiece = os.path.join(folder, "spiece.model")
    with open(spiece, "wb") as f:
        f.write(model.getvalue())
    processor = spm.SentencePieceProcessor(model_file=spiece)
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tokenizer, vocab_file=spiece, eos_token="</s>", unk_token="<unk>",
                    pad_token="<pad>", extra_ids=0, model_max_length=512).save_pretrained(folder)
    return len(vocab)


def make_deepfloyd_if(folder: str, seed: int = 0, with_text_encoder: bool = True) -> str:
    """Write a tiny DeepFloyd IF stage-I folder: a UNet with IF's layout (3 -> 6 channels:
    epsilon + learned variance, simple cross-attention blocks, text-pooled time embedding,
    scale-shift resnets), IF's DDPM schedule (squaredcos_cap_v2, learned_range), a tiny T5."""
    torch.manual_seed(seed)
    t5_dim = 16
    UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32,
        encoder_hid_dim=t5_dim, addition_embed_type="text", addition_embed_type_num_heads=2,
        attention_head_dim=8, resnet_time_scale_shift="scale_shift", norm_num_groups=32,
    ).save_pretrained(os.path.join(folder, "unet"))
    DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
        prediction_type="epsilon", clip_sample=True,
    ).save_pretrained(os.path.join(folder, "scheduler"))
    if with_text_encoder:

        vocab_size = write_t5_tokenizer(os.path.join(folder, "tokenizer"))
        T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=t5_dim, d_kv=8, d_ff=32,
                                num_layers=1, num_heads=2)).save_pretrained(
            os.path.join(folder, "text_encoder"))
    text = with_text_encoder
    _write_model_index(folder, "IFPipeline", "tiny", {
        "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"] if text else [None, None],
        "tokenizer": ["transformers", "T5TokenizerFast"] if text else [None, None],
        "safety_checker": [None, None], "feature_extractor": [None, None], "watermarker": [None, None],
        "requires_safety_checker": False,
    })
    return folder


BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_VIEW_WORDS = ("side", "front", "back", "overhead")


def make_bert(folder: str, words, seed: int = 0, size: str = "tiny",
              view_ties: Optional[Mapping[str, str]] = None) -> str:
    """A BertForMaskedLM folder with an uncased WordPiece vocabulary built from ``words``
    (lower-cased words, punctuation, and '##' pieces such as '##head') and the default view words
    (threestudio's direction names, single tokens as in bert-base-uncased). ``size="base"`` gives the
    full bert-base-uncased layout (12 layers, 768 wide) with random weights, for benchmarks.

    ``view_ties`` ({word: view word}, e.g. {"smiling": "front"}) builds instead a deliberately
    "peaky" tiny model with set weights, so that prompt-debiasing rules fire: each tied word
    raises the logit of its view word at [MASK] in proportion to its share of the sentence
    (``_set_peaky_weights``)."""
    os.makedirs(folder, exist_ok=True)
    vocab = list(BERT_SPECIAL_TOKENS)
    tied = {w.lower(): v.lower() for w, v in (view_ties or {}).items()}
    for token in list(words) + list(".,;:!?'-()") + list(BERT_VIEW_WORDS) + list(tied) + list(tied.values()):
        token = token if token.startswith("##") else token.lower()
        if token not in vocab:
            vocab.append(token)
    vocab_file = os.path.join(folder, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizer(vocab_file, do_lower_case=True, model_max_length=512).save_pretrained(folder)
    torch.manual_seed(seed)
    if size == "base":
        config = BertConfig(vocab_size=max(len(vocab), 30522))
    else:
        config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1 if tied else 2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                            tie_word_embeddings=not tied)
    model = BertForMaskedLM(config)
    if tied:
        _set_peaky_weights(model, vocab, tied)
    model.save_pretrained(folder)
    return folder


@torch.no_grad()
def _set_peaky_weights(model, vocab, tied: Mapping[str, str], strength: float = 6.0,
                       mixing: float = 4.0, sharpness: float = 8.0) -> None:
    """A one-layer BERT whose [MASK] prediction counts tied words. Hidden dimension k < 8 belongs
    to the k-th view word; every token embeds a fixed zero-mean pattern on dimensions 8.., a tied
    word adds ``strength`` on its view's dimension. Attention is uniform (zero queries and keys)
    with identity values, so the [MASK] position receives ``mixing`` x the mean embedding of the
    sentence; the feed-forward block adds nothing; the prediction head reads dimension k, times
    ``sharpness``, as the logit of view word k (every other token's logit is 0)."""
    hidden = model.config.hidden_size
    views = sorted(set(tied.values()))
    if len(views) > 8:
        raise ValueError("at most 8 tied view words")
    for parameter in model.parameters():
        parameter.zero_()
    pattern = torch.zeros(hidden)
    pattern[8:] = torch.tensor([1.0, -1.0]).repeat((hidden - 8) // 2)
    embeddings = model.bert.embeddings
    embeddings.word_embeddings.weight[:] = pattern
    for word, view in tied.items():
        embeddings.word_embeddings.weight[vocab.index(word), views.index(view)] += strength
    layer = model.bert.encoder.layer[0]
    eye = torch.eye(hidden)
    layer.attention.self.value.weight[:] = eye
    layer.attention.output.dense.weight[:] = mixing * eye
    model.cls.predictions.transform.dense.weight[:] = eye
    for norm in (embeddings.LayerNorm, layer.attention.output.LayerNorm, layer.output.LayerNorm,
                 model.cls.predictions.transform.LayerNorm):
        norm.weight.fill_(1.0)
    decoder = model.cls.predictions.decoder
    for k, view in enumerate(views):
        decoder.weight[vocab.index(view), k] = sharpness


def make_blip(folder: str, words=("a", "photo", "of", "blurry", "dark", "ugly", "dog", "cat"), seed: int = 0) -> str:
    """A tiny BLIP image-captioning folder (BlipProcessor + BlipForConditionalGeneration) with
    an uncased WordPiece vocabulary from ``words``; random weights, random captions."""
    os.makedirs(folder, exist_ok=True)
    vocab = list(BERT_SPECIAL_TOKENS) + [w for w in words if w not in BERT_SPECIAL_TOKENS]
    vocab_file = os.path.join(folder, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file, do_lower_case=True, model_max_length=64)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                         bos_token_id=2, sep_token_id=3, eos_token_id=3, pad_token_id=0,
                         encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=8),
        projection_dim=32,
    )
    BlipForConditionalGeneration(config).save_pretrained(folder)
    return folder


def make_clip(folder: str, seed: int = 0) -> str:
    """A tiny CLIP folder in the layout of the hub's ``openai/clip-vit-base-patch32`` (transformers
    ``CLIPModel`` config + weights, ``CLIPProcessor`` preprocessor and tokenizer files side by
    side), for the metrics and the 2D experiment on a CPU: 32x32 images, byte-level BPE, random
    weights (the similarities mean nothing)."""
    # written file by file, so that every transformers version (4.28 .. 5.x) reads the folder:
    # vocab.json + merges.txt (+ tokenizer.json), preprocessor_config.json, config.json + weights
    vocab_size = write_clip_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                         eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder
