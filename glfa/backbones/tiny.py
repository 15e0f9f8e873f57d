"""Tiny random models of the real classes, for tests and the demo.

The ``tiny_*`` builders write tiny configs of the same classes with ``save_pretrained``, so tests
and the demo load them back through the real loading path. Their tokenizer is a CLIP byte-level
BPE tokenizer whose merges are learnt here, offline, from a built-in caption word list
(:func:`tiny_tokenizer`): it tokenises any text (unknown words fall back to bytes).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from glfa.backbones.image import CLIP_MEAN, CLIP_STD

_FUNCTION_WORDS = (
    "a an the of in on at with and or to from by for is are was were be being been it its his her their "
    "this that these those there here up down into onto out off while as who which what one two three "
    "has have having not very some all each other another"
).split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte -> a printable unicode character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def learn_bpe(word_counts: dict[str, int], num_merges: int) -> list[tuple[str, str]]:
    """CLIP-style BPE merges (``</w>`` ends a word) learnt from word counts; ties break alphabetically."""
    alphabet = bytes_to_unicode()
    words: list[list[str]] = []
    counts: list[int] = []
    for word, count in word_counts.items():
        symbols = [alphabet[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        words.append(symbols)
        counts.append(count)
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}  # pair -> indices of the words holding it
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += counts[i]
            where.setdefault(pair, set()).add(i)
    merges: list[tuple[str, str]] = []
    while pairs and len(merges) < num_merges:
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for i in where.pop(best):
            symbols = words[i]
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] -= counts[i]
                if pairs[pair] <= 0:
                    del pairs[pair]
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    out.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            words[i] = out
            for pair in zip(out, out[1:]):
                pairs[pair] += counts[i]
                where.setdefault(pair, set()).add(i)
    return merges


@functools.lru_cache(maxsize=4)
def _caption_merges(num_merges: int) -> tuple[tuple[str, str], ...]:
    """BPE merges learnt once per process from the caption words of :data:`glfa.augment.SYNONYMS`."""
    from glfa.augment import SYNONYMS

    counts = {w: 1 for w in SYNONYMS} | {w: 5 for w in _FUNCTION_WORDS}
    return tuple(learn_bpe(counts, num_merges))


def tiny_tokenizer(folder: str | Path, *, num_merges: int = 2000):
    """Write and load a small CLIP byte-level BPE tokenizer (transformers ``CLIPTokenizer``) in ``folder``.

    The vocabulary is laid out like CLIP's: the 256 byte symbols, the same with ``</w>``, one token
    per merge, then ``<|startoftext|>`` and ``<|endoftext|>``. The merges are learnt offline from the
    caption words of :data:`glfa.augment.SYNONYMS` plus common function words (2000 merges make each
    of those words a single token, about 2,200 tokens in all); anything else falls back to pieces
    and bytes, so every text is tokenised.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = _caption_merges(num_merges)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _clip_text_config(vocab_size: int, width: int) -> dict[str, Any]:
    """Tiny CLIP text-tower settings of the given width."""
    return dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def tiny_clip(folder: str | Path, *, dim: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` (width 32, 2 layers per tower) with its tokenizer in ``folder``."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder)
    config = CLIPConfig(
        text_config=_clip_text_config(len(tokenizer), 32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=max(1, image_size // 4)),
        projection_dim=dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    preprocessor = {"image_processor_type": "CLIPImageProcessor", "image_mean": list(CLIP_MEAN),
                    "image_std": list(CLIP_STD), "size": {"shortest_edge": image_size},
                    "crop_size": {"height": image_size, "width": image_size}}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder


def tiny_video_generator(folder: str | Path, *, cross_attention_dim: int = 32, sample_size: int = 32,
                         seed: int = 0) -> Path:
    """Save a tiny random diffusers text-to-video model (zeroscope layout) in ``folder``.

    ``sample_size`` is the frame side in pixels; the VAE downsamples by 4, so the UNet works on
    ``sample_size / 4`` latents (two UNet levels: keep ``sample_size`` a multiple of 8). The text
    encoder is a tiny ``CLIPTextModel`` of width ``cross_attention_dim`` with :func:`tiny_tokenizer`.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet3DConditionModel(
        sample_size=sample_size // 4, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=sample_size,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, prediction_type="epsilon")
    tokenizer = tiny_tokenizer(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(**_clip_text_config(len(tokenizer), cross_attention_dim)))
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        part.save_pretrained(folder / name, safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    # The model_index.json that diffusers' TextToVideoSDPipeline.save_pretrained writes.
    index = {"_class_name": "TextToVideoSDPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def tiny_frame_classifier(folder: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny random ``ViTForImageClassification`` with 1000 classes in ``folder``."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(image_size=image_size, patch_size=max(1, image_size // 4), hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, num_labels=1000)
    ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def tiny_video_classifier(folder: str | Path, *, image_size: int = 32, num_frames: int = 4, seed: int = 0) -> Path:
    """Save a tiny random ``VideoMAEForVideoClassification`` with 400 classes in ``folder``."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(seed)
    config = VideoMAEConfig(image_size=image_size, patch_size=max(1, image_size // 4), num_frames=num_frames,
                            tubelet_size=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, num_labels=400)
    VideoMAEForVideoClassification(config).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def tiny_blip2(folder: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny random ``Blip2ForConditionalGeneration`` (OPT decoder) with its tokenizer in ``folder``.

    The tokenizer is :func:`tiny_tokenizer` plus the ``<image>`` token that BLIP-2's processor adds;
    4 query tokens. Random weights caption garbage: this exercises the loading and captioning path.
    """
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.save_pretrained(folder)
    vocab = len(tokenizer)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=max(1, image_size // 4)),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=vocab, max_position_embeddings=64),
        text_config=dict(model_type="opt", vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                         num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    Blip2ForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    preprocessor = {"image_processor_type": "BlipImageProcessor", "image_mean": list(CLIP_MEAN),
                    "image_std": list(CLIP_STD), "size": {"height": image_size, "width": image_size}}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder
